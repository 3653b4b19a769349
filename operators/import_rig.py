# SPDX-License-Identifier: GPL-3.0-or-later
"""Import a camera rig (any format engine.io.rig reads, file or folder) as Blender cameras. A Marble
sequence.json given here (dropped on the viewport: .json files all come here) goes on to Import Sequence."""
import json
import os

import bpy
from bpy_extras.io_utils import ImportHelper

from ..addon.build import rig as rig_build
from ..engine.io import rig as rigs
from .files import invoke_import

FILTER = "*.json;*.npz;*.txt;*.bin"


class MARBLE_OT_import_rig(bpy.types.Operator, ImportHelper):
    """Import calibrated cameras: transforms.json (NeRF, instant-ngp, NeuS2), a NeuS2 folder of
    per-frame transforms, COLMAP (text or binary; the model files or a folder holding sparse/0),
    IDR/NeuS cameras_sphere.npz. Pick a file, or open a folder and import it with nothing selected"""
    bl_idname = "marble.import_rig"
    bl_label = "Import Rig"
    bl_options = {'REGISTER', 'UNDO'}

    filename_ext = ""
    filter_glob: bpy.props.StringProperty(default=FILTER, options={'HIDDEN'})
    directory: bpy.props.StringProperty(
        name="Folder", subtype='DIR_PATH', options={'HIDDEN', 'SKIP_SAVE'},
        description="The folder the file browser is in: imported as a whole when no file is chosen")
    background_images: bpy.props.BoolProperty(
        name="Background Images", default=True,
        description="Show each photograph behind its camera's view (the first frame's for a dynamic rig)")

    def draw(self, context):
        self.layout.prop(self, "background_images")

    def invoke(self, context, event):
        return invoke_import(self, context, event)  # a dropped file imports at once

    def _path(self):
        path = bpy.path.abspath(self.filepath) if self.filepath else ""
        if self.directory and (not path or path.endswith(("/", os.sep))):
            path = bpy.path.abspath(self.directory)  # nothing chosen in the folder: the folder is the rig
        return os.path.abspath(path) if path else ""

    def execute(self, context):
        path = self._path()
        if not path:
            self.report({'ERROR'}, "No rig file or folder given")
            return {'CANCELLED'}
        document = read_json_object(path)
        if is_sequence(document):
            return self._import_sequence(path)
        # Read and check everything before creating any Blender data; build_rig cleans up after itself.
        try:
            rig = rigs.load_rig(path)
            built = rig_build.build_rig(rig, context.scene, background_images=self.background_images)
        except (rigs.RigError, ValueError, OSError) as exc:
            if document is not None and not isinstance(document.get("frames"), list):
                exc = (f"{path}: neither a camera rig (transforms.json: an object with a list 'frames') nor a "
                       f"Marble sequence (sequence.json)")
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        settings = context.scene.marble
        settings.rig_path = rig.path
        settings.rig_collection = built.collection
        settings.region = built.region
        for warning in built.warnings:
            self.report({'WARNING'}, warning)
        frames = built.collection.get(rig_build.PROP_FRAME_COUNT, 1)
        what = f"{len(built.cameras)} cameras" + (f" over {frames} frames" if frames > 1 else "")
        source = os.path.basename(rig.path.rstrip(os.sep)) or rig.path
        self.report({'INFO'}, f"Imported {what} from {source} into '{built.collection.name}'")
        return {'FINISHED'}

    def _import_sequence(self, path):
        """A sequence.json: imported by Import Sequence (its reports are its own)."""
        try:
            return bpy.ops.marble.import_sequence(filepath=path)
        except RuntimeError as exc:  # the error it reported
            self.report({'ERROR'}, str(exc).removeprefix("Error: ").strip())
            return {'CANCELLED'}


def read_json_object(path):
    """The JSON object in the file `path` when it is a .json file holding one, else None (the rig
    reader says what is wrong with it)."""
    if not path.lower().endswith(".json") or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else {}


def is_sequence(document):
    """A Marble sequence.json: frames that name meshes (a rig's frames name images and poses)."""
    frames = document.get("frames") if document else None
    return (isinstance(frames, list) and bool(frames) and all(isinstance(f, dict) for f in frames)
            and all("mesh" in f for f in frames) and not any("transform_matrix" in f for f in frames))


CLASSES = (MARBLE_OT_import_rig,)
