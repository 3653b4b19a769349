# SPDX-License-Identifier: GPL-3.0-or-later
"""What the engine's events do to the Blender scene, on the main thread (from the tick): the preview
mesh, the region empty following the engine's region, the final mesh, a dynamic job's sequence
growing frame by frame (build.sequence.LiveSequence), a calibration's dataset (cameras, region and
points, build.points) becoming the scene's rig, and an export's result: a textured mesh replacing the
rig's earlier one (build.textured), or a USD sequence as a sequence cache (build.sequence_cache).

A resumed dynamic job first adds the frames its sequence.json already lists; `done` makes the
collection hold exactly the frames of sequence.json. A frame that cannot be imported fails the job and
stops the engine (it saves a checkpoint, as on cancel).
"""
import os
import time

import bpy

from ...engine.io import protocol
from ...engine.io import sequence as sequence_io
from ..build import mesh as meshes
from ..build import points as points_build
from ..build import region as regions
from ..build import sequence_cache
from ..build import textured as textured_build
from ..build.sequence import LiveSequence
from . import reducer


class SceneTargets:
    """Where a job's results go in the scene, and what it made there (names, looked up each time:
    ID pointers kept across ticks would dangle after a file load)."""

    def __init__(self, scene_name, collection_name, region_name=None, resume=False, kind="train", source_name=""):
        self.kind = kind                      # "train", "calibrate" (its done imports the dataset) or "export"
        self.source_name = source_name        # a calibration: the collection's name (the photographs' folder)
        self.scene_name = scene_name
        self.collection_name = collection_name
        self.region_name = region_name        # an automatic region empty that follows the engine's region
        self.resume = resume                  # a resumed job goes on with the frames already finished
        self.preview_name = None
        self.dynamic = False                  # set by the started event
        self.coordinates = "world"            # a dynamic job's mesh coordinates (started event)
        self.sequence = None                  # a dynamic job's LiveSequence, made by its first frame
        self.failure = None                   # why the add-on failed the job (a frame it cannot import)


def handle(job, event, state):
    """Act on one event (`job`: an EngineProcess with SceneTargets' attributes). Returns True when it
    imported meshes (a slow event: the next events wait for the next tick)."""
    kind = event["event"]
    if state is None:
        return False
    if job.failure is not None:
        # The add-on already failed this job and asked the engine to stop: only its end still counts.
        if kind in protocol.FINAL_EVENTS:
            job.final = kind
            state.resumable = reducer.has_checkpoint(job.job_dir)
        return False
    if kind in protocol.FINAL_EVENTS:
        job.final = kind
    reducer.update_state(state, event)
    if kind == protocol.STARTED:
        job.dynamic = bool(event.get("dynamic"))
        if event.get("coordinates") in sequence_io.COORDINATES:
            job.coordinates = event["coordinates"]
        if job.dynamic and job.resume:
            return _show_finished_frames(job, state)
    elif kind == protocol.STAGE and event.get("name") == "train" and isinstance(event.get("region"), dict):
        _follow_region(job, event["region"])
    elif kind == protocol.PREVIEW:
        _show_preview(job, event.get("path"))
    elif kind == protocol.MESH and job.kind == "train" and reducer.is_integer(event.get("frame")):
        return _add_frame(job, event, state)
    elif kind == protocol.ERROR:
        state.resumable = job.kind != "export" and reducer.has_checkpoint(job.job_dir)
    elif kind == protocol.DONE:
        remove_preview(job)
        outputs = event.get("outputs")
        outputs = outputs if isinstance(outputs, dict) else {}
        if job.kind == "calibrate":
            return _import_calibration(job, state, outputs)
        if job.kind == "export":
            return _import_export(job, state, outputs)
        if job.dynamic or outputs.get("sequence"):
            return _finish_sequence(job, state, outputs)
        return _import_mesh(job, state)
    return False


def _import_mesh(job, state):
    """A static job's done: its mesh joins the rig's collection."""
    mesh_path = state.mesh_path or os.path.join(job.job_dir, protocol.MESHES_DIR, protocol.STATIC_MESH_FILE)
    state.mesh_path = mesh_path
    try:
        obj = meshes.build_mesh(mesh_path, _target_collection(job), name=_mesh_name(job))
    except (meshes.MeshError, OSError) as exc:
        state.state = 'failed'
        state.message = reducer.bounded(f"The engine finished but its mesh cannot be imported: {exc}")
    else:
        meshes.show_color_attributes(bpy.context.window_manager)
        state.state = 'done'
        state.message = f"Imported '{obj.name}' ({len(obj.data.vertices)} vertices)"
    return True


def _import_calibration(job, state, outputs):
    """A calibration's done: its dataset's cameras, region and points in one collection, which becomes
    the scene's rig (as Import Rig sets it), so Train works on it."""
    dataset = str(outputs.get("dataset") or os.path.join(job.job_dir, protocol.DATASET_DIR))
    transforms = str(outputs.get("transforms") or os.path.join(dataset, protocol.TRANSFORMS_FILE))
    points = str(outputs.get("points") or os.path.join(dataset, protocol.POINTS_FILE))
    scene = _scene(job)
    try:
        built = points_build.build_calibrated(transforms, points, job.source_name or "Photos", scene)
    except (ValueError, OSError) as exc:  # RigError and PlyError are ValueErrors
        state.state = 'failed'
        state.message = reducer.bounded(f"The calibration finished but its dataset cannot be imported: {exc} "
                                        f"(Import Rig reads the dataset: {dataset})")
        return True
    # The scene's rig, as Import Rig sets it (operators/import_rig.py).
    settings = scene.marble
    settings.rig_path = built.rig.path
    settings.rig_collection = built.collection
    settings.region = built.region
    job.collection_name = built.collection.name
    meshes.show_color_attributes(bpy.context.window_manager)
    state.state = 'done'
    registered, images = outputs.get("registered"), outputs.get("images")
    of = f" ({registered} of {images} photographs registered)" if (
        reducer.is_integer(registered) and reducer.is_integer(images)) else ""
    message = (f"Imported {len(built.cameras)} cameras and {len(built.points.data.vertices)} points into "
               f"'{built.collection.name}'{of}")
    state.message = reducer.bounded("\n".join([message] + list(built.warnings)))
    return True


def sequence_cache_name(collection_name):
    """What a dynamic job's USD sequence cache is called in the scene."""
    return f"{collection_name} sequence cache" if collection_name else "Marble sequence cache"


def _import_export(job, state, outputs):
    """An export's done: a textured mesh replaces the rig's earlier one; a USD sequence arrives as a
    sequence cache. A result that cannot be imported fails the job and adds nothing."""
    path = str(outputs.get("export") or "")
    fmt = outputs.get("format")
    if not path:
        state.state = 'failed'
        state.message = "The export finished without naming its file"
        return True
    try:
        if fmt == "usd":
            name, collection = sequence_cache_name(job.collection_name), _target_collection(job)
            earlier = collection.objects.get(name)
            obj = sequence_cache.build_sequence_cache(path, name, collection, _scene(job))
            if earlier is not None and earlier.get(sequence_cache.PROP_USD):
                _remove_sequence_cache(earlier)  # an export again: the new object takes its place and name
                obj.name = name
            message = f"Imported the USD sequence {os.path.basename(path)} as '{obj.name}'"
        elif fmt in (None, "glb"):
            built = textured_build.build_textured(path, textured_build.textured_name(job.collection_name),
                                                  _target_collection(job))
            size = "x".join(str(n) for n in built.image.size) if built.image is not None else "?"
            message = (f"Imported '{built.objects[0].name}': {built.vertices} vertices, {built.faces} faces, "
                       f"texture {size}")
        else:
            state.state = 'done'
            state.message = reducer.bounded(f"Exported {path} (Blender does not import {fmt} files here)")
            return True
    except (ValueError, OSError, RuntimeError) as exc:  # TexturedError and SequenceCacheError are ValueErrors
        state.state = 'failed'
        state.message = reducer.bounded(f"The export finished but its result cannot be imported: {exc}")
        return True
    state.state = 'done'
    state.message = reducer.bounded(message)
    return True


def _remove_sequence_cache(obj):
    """Remove a sequence cache object with its mesh and cache file (when nothing else uses them)."""
    mesh = obj.data
    caches = [m.cache_file for m in obj.modifiers if m.type == 'MESH_SEQUENCE_CACHE' and m.cache_file is not None]
    bpy.data.objects.remove(obj)
    if mesh is not None and mesh.users == 0:
        bpy.data.meshes.remove(mesh)
    orphans = [cache for cache in caches if cache.users == 0]
    if orphans:
        bpy.data.batch_remove(orphans)  # bpy.data.cache_files has no remove()


def fail(job, state, message):
    """The add-on cannot go on with this job: show why and stop the engine (it saves a checkpoint)."""
    job.failure = message
    state.state = 'failed'
    state.message = reducer.bounded(message)
    if job.final is None:
        job.request_cancel(time.monotonic())


def _follow_region(job, reported):
    """Show the region the engine actually uses on the automatic region empty (unless moved meanwhile)."""
    obj = bpy.data.objects.get(job.region_name) if job.region_name else None
    if obj is None or not regions.is_auto(obj) or not regions.is_untouched(obj):
        return
    try:
        centre = [float(x) for x in reported.get("center")]
        radius = float(reported.get("radius"))
    except (TypeError, ValueError):
        return
    if len(centre) == 3:
        regions.follow(obj, centre, radius)


def _scene(job):
    return bpy.data.scenes.get(job.scene_name) or bpy.context.scene


def _target_collection(job):
    collection = bpy.data.collections.get(job.collection_name) if job.collection_name else None
    return collection if collection is not None else _scene(job).collection


def _mesh_name(job):
    return f"{job.collection_name} mesh" if job.collection_name else "Marble mesh"


def _show_preview(job, path):
    """Show the coarse mesh the engine just wrote on the one preview object: the first preview makes
    it, later ones replace its mesh data in place."""
    if not path or not str(path).lower().endswith(".ply"):
        return
    obj = bpy.data.objects.get(job.preview_name) if job.preview_name else None
    try:
        if obj is not None:
            meshes.replace_mesh(obj, path)
        else:
            obj = meshes.build_mesh(path, _target_collection(job), name=f"{_mesh_name(job)} preview")
            obj.display_type = 'SOLID'
            job.preview_name = obj.name
    except (meshes.MeshError, OSError):
        return  # a preview is a nicety; the final mesh still arrives


def remove_preview(job):
    obj = bpy.data.objects.get(job.preview_name) if job.preview_name else None
    job.preview_name = None
    if obj is not None:
        mesh = obj.data
        bpy.data.objects.remove(obj)
        if mesh is not None and mesh.users == 0:
            bpy.data.meshes.remove(mesh)


# ---------------------------------------------------------------------------------------------
# Dynamic jobs: the sequence grows in the scene frame by frame

def _sequence_name(job):
    return f"{job.collection_name} sequence" if job.collection_name else "Marble sequence"


def _live_sequence(job, path, coordinates):
    """The job's sequence collection: the one it made, else (resuming) the one an earlier run of the job
    made in the scene, else a new one where the static job's mesh would go."""
    if job.sequence is not None and job.sequence.collection is not None:
        return job.sequence
    scene = _scene(job)
    live = LiveSequence.find(job.job_dir, scene) if job.resume else None
    if live is None:
        live = LiveSequence.create(_sequence_name(job), _target_collection(job), path, coordinates, job.job_dir, scene)
    job.sequence = live
    return live


def _add_frame(job, event, state):
    """A finished frame's mesh event: its object joins the job's sequence collection."""
    frame = event["frame"]
    try:
        coordinates, entry = sequence_io.entry_from_event(event, job.coordinates)
        arrays = sequence_io.read_frame_mesh(entry)  # before anything is made: a bad file changes nothing
        live = _live_sequence(job, event.get("sequence") or sequence_io.sequence_path(job.job_dir), coordinates)
        first = not live.frames()
        obj = live.add(entry, _scene(job), arrays, canonical=coordinates == "canonical")
    except (ValueError, OSError) as exc:  # SequenceError and MeshError are ValueErrors
        fail(job, state, f"Frame {frame}'s mesh cannot be imported: {exc}")
        return True
    if first:
        meshes.show_color_attributes(bpy.context.window_manager)
    count = len(live.frames())
    state.frames_done = count
    state.message = (f"Frame {frame}: '{obj.name}' ({len(obj.data.vertices)} vertices); "
                     f"{count} frame{'s' if count != 1 else ''} in '{live.name}'")
    return True


def _sync_sequence(job, path, remove_missing=False):
    """Read the job's sequence.json and make its collection hold those frames; returns (sequence, live)."""
    sequence = sequence_io.read_sequence(path)
    live = _live_sequence(job, path, sequence.coordinates)
    live.sync(sequence, _scene(job), remove_missing=remove_missing)
    return sequence, live


def _show_finished_frames(job, state):
    """A resumed dynamic job: the engine does not send the frames it finished before again, so they come
    from its sequence.json (those the scene lacks; e.g. the job was resumed in a new Blender session)."""
    path = sequence_io.sequence_path(job.job_dir)
    if not os.path.isfile(path):
        return False
    try:
        _, live = _sync_sequence(job, path)
    except (ValueError, OSError) as exc:
        fail(job, state, f"The frames this job finished before cannot be imported: {exc}")
        return True
    state.sequence_path = path
    state.frames_done = len(live.frames())
    return True


def _finish_sequence(job, state, outputs):
    """A dynamic job's done: the collection holds exactly the frames of its sequence.json."""
    try:
        sequence, live = _sync_sequence(job, str(outputs.get("sequence") or sequence_io.sequence_path(job.job_dir)),
                                        remove_missing=True)
    except (ValueError, OSError) as exc:
        state.state = 'failed'
        state.message = reducer.bounded(f"The engine finished but its sequence cannot be imported: {exc}")
        return True
    meshes.show_color_attributes(bpy.context.window_manager)
    frames = live.frames()
    state.state = 'done'
    state.sequence_path = sequence.path
    state.frames_done = len(frames)
    state.message = (f"Imported {len(frames)} frame{'s' if len(frames) != 1 else ''} ({frames[0]} to "
                     f"{frames[-1]}) into '{live.name}'")
    return True
