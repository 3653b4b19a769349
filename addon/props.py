# SPDX-License-Identifier: GPL-3.0-or-later
"""Property groups: scene.marble (what to reconstruct, saved with the file) and wm.marble_job (the
running job's state, which lives only as long as the session)."""
import bpy

from ..engine import config


def enum_items(choices):
    """EnumProperty items from one of engine.config's {name: (label, description)} tables."""
    return tuple((name, label, description) for name, (label, description) in choices.items())


DEFAULT_ITEM = ('default', "Default", "The default chosen in Preferences > Add-ons > Marble")
RESOLUTION_MIN, RESOLUTION_MAX = config.RANGES["mesh.resolution"]
# The textured mesh's settings (`python -m engine export --faces N --texture PX`), within the engine's ranges.
FACES_LEAST, FACES_MOST = config.RANGES.get("export.faces", (0, 10 ** 7))
TEXTURE_SIZES = {str(px): (f"{px} px", f"The baked colour texture is {px} x {px} pixels")
                 for px in (512, 1024, 2048, 4096)}
JOB_STATES = {
    'idle': ("Idle", "No job has run in this session"),
    'running': ("Running", "The engine is training, calibrating or exporting"),
    'cancelling': ("Cancelling", "Asked the engine to stop (a training job saves a checkpoint first)"),
    'cancelled': ("Cancelled", "The engine stopped on request"),
    'failed': ("Failed", "The engine stopped with an error"),
    'done': ("Done", "The job's result was imported"),
}
JOB_KINDS = {
    'train': ("Training", "Reconstructs a mesh from the scene's rig (Train)"),
    'calibrate': ("Calibration", "Calibrates cameras from photographs or a video (File > Import > Photos)"),
    'export': ("Export", "Exports a finished job's textured mesh or USD sequence (Results)"),
}


class MarbleSceneSettings(bpy.types.PropertyGroup):
    rig_path: bpy.props.StringProperty(
        name="Rig", description="Camera rig the engine trains on: a file (transforms.json, COLMAP model, "
                                "cameras_sphere.npz) or a folder holding one",
        subtype='FILE_PATH')
    rig_collection: bpy.props.PointerProperty(
        name="Rig Collection", type=bpy.types.Collection,
        description="Collection holding the imported cameras; the reconstructed mesh goes here")
    region: bpy.props.PointerProperty(
        name="Region", type=bpy.types.Object, poll=lambda self, obj: obj.type == 'EMPTY',
        description="Empty whose sphere is the region to reconstruct: move and scale it to change "
                    "what training reconstructs")
    preset: bpy.props.EnumProperty(name="Preset", items=(DEFAULT_ITEM,) + enum_items(config.PRESETS), default='default')
    iterations: bpy.props.IntProperty(
        name="Iterations", description="Training iterations (0: the preset's default)",
        default=0, min=0, soft_max=100000)
    resolution: bpy.props.IntProperty(
        name="Mesh Resolution", description="Marching-cubes grid resolution of the extracted mesh",
        default=256, min=RESOLUTION_MIN, max=RESOLUTION_MAX)
    device: bpy.props.EnumProperty(name="Device", items=(DEFAULT_ITEM,) + enum_items(config.DEVICES), default='default')
    gpus: bpy.props.IntProperty(
        name="GPUs", default=1, min=1, max=64, soft_max=8,
        description="Spread a dynamic rig's frames over this many GPUs of this machine: the engine runs "
                    "under torchrun, one process a GPU, each training its own stretch of frames into the "
                    "same sequence (1: one process; a static rig always trains on one)")
    use_masks: bpy.props.BoolProperty(
        name="Use Masks", default=True,
        description="Train with the rig's object masks (alpha or mask images) when it has them; off: "
                    "reconstruct the whole view, with a background model behind the region")
    job_dir: bpy.props.StringProperty(
        name="Job Folder",
        description="Where the engine writes its job; once a job used it, each new job gets a fresh "
                    "sub-folder in it (empty: a new folder in the job folder of the preferences)",
        subtype='DIR_PATH')
    export_faces: bpy.props.IntProperty(
        name="Faces", description="The textured mesh is decimated to about this many faces",
        default=50000, min=max(100, FACES_LEAST), max=FACES_MOST, soft_max=1000000)
    export_texture: bpy.props.EnumProperty(
        name="Texture Size", items=enum_items(TEXTURE_SIZES), default='2048',
        description="Width and height in pixels of the texture the mesh's colours are baked into")
    last_job: bpy.props.StringProperty(
        name="Last Job", subtype='DIR_PATH',
        description="The job folder of this scene's last training run (saved with the file, so its state "
                    "shows again when the file is reopened)")


class MarbleJobState(bpy.types.PropertyGroup):
    state: bpy.props.EnumProperty(name="State", items=enum_items(JOB_STATES), default='idle')
    kind: bpy.props.EnumProperty(name="Kind", items=enum_items(JOB_KINDS), default='train',
                                 description="What the job does: train a rig, or calibrate photographs")
    progress: bpy.props.FloatProperty(name="Progress", min=0.0, max=1.0, subtype='FACTOR')
    iteration: bpy.props.IntProperty(name="Iteration")
    total: bpy.props.IntProperty(name="Total")
    loss: bpy.props.FloatProperty(name="Loss")
    psnr: bpy.props.FloatProperty(name="PSNR")
    eta_s: bpy.props.FloatProperty(name="ETA", description="Estimated seconds left")
    stage: bpy.props.StringProperty(name="Stage")
    frame: bpy.props.IntProperty(name="Frame", default=-1, description="Frame being trained (-1: a static job)")
    dynamic: bpy.props.BoolProperty(name="Dynamic", description="The job trains a sequence of frames, one mesh each")
    frame_index: bpy.props.IntProperty(name="Frame Index", default=-1,
                                       description="Position of the frame being trained in the job's frames "
                                                   "(0-based; -1: none)")
    frame_count: bpy.props.IntProperty(name="Frame Count", description="How many frames the dynamic job trains")
    frames_done: bpy.props.IntProperty(name="Frames Done",
                                       description="Finished frames (in the job's sequence.json and in the scene)")
    phase: bpy.props.StringProperty(name="Phase", description="What the dynamic job does within its frame: "
                                                              "predict (its rigid motion) or train")
    sequence_path: bpy.props.StringProperty(name="Sequence", subtype='FILE_PATH',
                                            description="The dynamic job's meshes/sequence.json")
    message: bpy.props.StringProperty(name="Message")
    job_dir: bpy.props.StringProperty(name="Job Folder", subtype='DIR_PATH')
    mesh_path: bpy.props.StringProperty(name="Mesh", subtype='FILE_PATH')
    device: bpy.props.StringProperty(name="Device", description="Device and backend the engine reported")
    export_path: bpy.props.StringProperty(name="Export", subtype='FILE_PATH',
                                          description="The file the last export wrote")
    resumable: bpy.props.BoolProperty(name="Resumable",
                                      description="The stopped job has a checkpoint to go on from")


EXPORT_STATES = {
    'idle': ("Idle", "No export has run in this session"),
    'running': ("Rendering", "Rendering the scene through each camera"),
    'cancelled': ("Cancelled", "The export was cancelled; no transforms.json was written"),
    'failed': ("Failed", "The export stopped with an error"),
    'done': ("Done", "The rig was written"),
}


class MarbleExportState(bpy.types.PropertyGroup):
    state: bpy.props.EnumProperty(name="State", items=enum_items(EXPORT_STATES), default='idle')
    progress: bpy.props.FloatProperty(name="Progress", min=0.0, max=1.0, subtype='FACTOR')
    done: bpy.props.IntProperty(name="Done", description="Images rendered so far")
    total: bpy.props.IntProperty(name="Total", description="Images to render")
    camera: bpy.props.StringProperty(name="Camera", description="The camera rendered last")
    message: bpy.props.StringProperty(name="Message")
    filepath: bpy.props.StringProperty(name="File", subtype='FILE_PATH')


CLASSES = (MarbleSceneSettings, MarbleJobState, MarbleExportState)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register():
    _register_classes()
    bpy.types.Scene.marble = bpy.props.PointerProperty(type=MarbleSceneSettings)
    bpy.types.WindowManager.marble_job = bpy.props.PointerProperty(type=MarbleJobState)
    bpy.types.WindowManager.marble_export = bpy.props.PointerProperty(type=MarbleExportState)


def unregister():
    del bpy.types.WindowManager.marble_export
    del bpy.types.WindowManager.marble_job
    del bpy.types.Scene.marble
    _unregister_classes()
