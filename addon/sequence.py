# SPDX-License-Identifier: GPL-3.0-or-later
"""Dynamic mesh sequences: a job's `meshes/sequence.json` -> one object per frame, each shown at its frames.

The file (written by the engine for a dynamic job):

    {"coordinates": "world" | "canonical",          # optional, "world" when absent
     "frames": [{"frame": 123,                       # Blender frame, an integer, each once
                 "mesh": "frame_000123.ply",          # absolute, or relative to the json's folder
                 "world_from_canonical": [[...4...] x 4],   # row-major 4x4
                 "seconds": 4.1}, ...]}               # optional, kept as a custom property

"world": the meshes are in the rig's world coordinates and the objects stay at the identity.
"canonical": the meshes are in a canonical space and each object is placed by its frame's
world_from_canonical (a constant keyframe on location, rotation and scale at its frame); it must be
a translation, rotation and (possibly negative, non-uniform) scale: shear cannot be keyed.
world_from_canonical is required for canonical sequences and optional (but checked when present)
for world ones.

Visibility: object i (frames sorted, f_0 < f_1 < ...) is shown from f_i up to the frame before
f_{i+1} and hidden everywhere else, so a gap in the frames keeps the last mesh showing until the
next one appears and exactly one object is visible at every frame from the first to the last
(none outside). Both `hide_viewport` and `hide_render` are keyed, constant, hidden at f_i - 1,
shown at f_i and hidden again at f_{i+1} (f_i + 1 for the last).

read_sequence() only reads and checks (no bpy data); build_sequence() reads every mesh file before
creating anything, and removes whatever it created when anything fails.
"""
import collections
import json
import math
import os

import bpy
import numpy as np
from mathutils import Matrix

from ..engine.plyio import PlyError, read_ply
from . import scene as builders

SEQUENCE_FILE = "sequence.json"
COORDINATES = ("world", "canonical")
MAX_FRAME = 1048574              # Blender's frame range: Scene.frame_start/frame_end lie in [0, MAX_FRAME]
ORTHONORMAL_TOLERANCE = 1e-4     # |R^T R - I| above this: world_from_canonical has shear
# Mesh arrays kept in memory between reading every file and building: beyond this many bytes, files
# are read (and so checked) first and read again while building, so memory stays bounded.
CACHE_BYTES = 512 * 2 ** 20

# Custom properties.
PROP_SEQUENCE = "marble_sequence"          # collection: the sequence.json it came from
PROP_COORDINATES = "marble_coordinates"    # collection: "world" or "canonical"
PROP_FRAME_COUNT = builders.PROP_FRAME_COUNT
PROP_FRAME = builders.PROP_FRAME           # object: its frame
PROP_MESH = "marble_mesh"                  # object: the PLY it was made from
PROP_SECONDS = "marble_seconds"            # object: the frame's time in seconds, when given
PROP_WORLD_FROM_CANONICAL = "marble_world_from_canonical"  # object: 16 floats, row-major, when given


class SequenceError(ValueError):
    """A sequence that cannot be imported; the message names the file (and the entry)."""


SequenceFrame = collections.namedtuple("SequenceFrame", "frame mesh world_from_canonical seconds entry")
Sequence = collections.namedtuple("Sequence", "path name coordinates frames")
SequenceBuild = collections.namedtuple("SequenceBuild", "collection objects")


# ---------------------------------------------------------------------------------------------
# Reading (no Blender data)

def find_sequence_file(path):
    """The sequence.json for `path`: the file itself, or a folder's sequence.json or meshes/sequence.json
    (so a job folder works too)."""
    if os.path.isdir(path):
        for candidate in (os.path.join(path, SEQUENCE_FILE), os.path.join(path, "meshes", SEQUENCE_FILE)):
            if os.path.isfile(candidate):
                return candidate
        raise SequenceError(f"{path}: no {SEQUENCE_FILE} in this folder or in its meshes folder")
    return path


def sequence_name(path):
    """The job's name for JOB/meshes/sequence.json; otherwise the file's stem, or its folder's name
    when the stem is just 'sequence'."""
    folder, base = os.path.split(os.path.abspath(path))
    stem = os.path.splitext(base)[0]
    if os.path.basename(folder) == "meshes" and os.path.basename(os.path.dirname(folder)):
        return os.path.basename(os.path.dirname(folder))
    if stem != "sequence" or not os.path.basename(folder):
        return stem or "sequence"
    return os.path.basename(folder)


def read_sequence(path):
    """Parse and check a sequence.json (or a folder holding one); returns a Sequence with its frames
    sorted by frame and every mesh path absolute. Raises SequenceError naming the file and the entry."""
    path = find_sequence_file(os.path.abspath(path))
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise SequenceError(f"{path}: no such file") from None
    except OSError as exc:
        raise SequenceError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SequenceError(f"{path}: not a text (UTF-8) file") from None
    except json.JSONDecodeError as exc:
        raise SequenceError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise SequenceError(f"{path}: expected a JSON object with 'frames', found {type(data).__name__}")
    coordinates = data.get("coordinates", "world")
    if coordinates not in COORDINATES:
        raise SequenceError(f"{path}: 'coordinates' is {coordinates!r}; expected 'world' or 'canonical'")
    entries = data.get("frames")
    if not isinstance(entries, list):
        raise SequenceError(f"{path}: " + ("no 'frames' list" if entries is None else
                                           f"'frames' is a {type(entries).__name__}, not a list"))
    if not entries:
        raise SequenceError(f"{path}: 'frames' is empty")
    folder = os.path.dirname(path)
    frames, seen = [], {}
    for index, entry in enumerate(entries):
        frame = _read_entry(path, folder, index, entry, coordinates)
        if frame.frame in seen:
            raise SequenceError(f"{path}: frames[{index}]: frame {frame.frame} appears twice "
                                f"(also frames[{seen[frame.frame]}])")
        seen[frame.frame] = index
        frames.append(frame)
    frames.sort(key=lambda f: f.frame)
    return Sequence(path, sequence_name(path), coordinates, tuple(frames))


def _read_entry(path, folder, index, entry, coordinates):
    where = f"{path}: frames[{index}]"
    if not isinstance(entry, dict):
        raise SequenceError(f"{where}: expected an object, found {type(entry).__name__}")
    for key in ("frame", "mesh") + (("world_from_canonical",) if coordinates == "canonical" else ()):
        if key not in entry:
            raise SequenceError(f"{where}: missing key '{key}'")
    frame = entry["frame"]
    if isinstance(frame, bool) or not isinstance(frame, int):
        raise SequenceError(f"{where}: 'frame' must be an integer, found {frame!r}")
    if not 0 <= frame <= MAX_FRAME:
        raise SequenceError(f"{where}: frame {frame} is outside Blender's frame range (0 to {MAX_FRAME})")
    where = f"{path}: frames[{index}] (frame {frame})"
    mesh = entry["mesh"]
    if not isinstance(mesh, str) or not mesh:
        raise SequenceError(f"{where}: 'mesh' must be a file path, found {mesh!r}")
    mesh = os.path.normpath(os.path.join(folder, mesh))  # an absolute path stays as it is
    if not os.path.isfile(mesh):
        raise SequenceError(f"{where}: mesh file {mesh} does not exist")
    matrix = entry.get("world_from_canonical")
    if matrix is not None:
        matrix = _matrix(where, matrix)
        if coordinates == "canonical":
            try:
                decompose(matrix)
            except ValueError as exc:
                raise SequenceError(f"{where}: 'world_from_canonical' {exc}") from None
    elif coordinates == "canonical":
        raise SequenceError(f"{where}: 'world_from_canonical' is null")
    seconds = entry.get("seconds")
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise SequenceError(f"{where}: 'seconds' must be a finite number, found {seconds!r}")
        seconds = float(seconds)
    return SequenceFrame(frame, mesh, matrix, seconds, index)


def _matrix(where, value):
    try:
        matrix = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise SequenceError(f"{where}: 'world_from_canonical' must be a 4x4 list of numbers") from None
    if matrix.shape != (4, 4):
        raise SequenceError(f"{where}: 'world_from_canonical' must be 4x4 (4 rows of 4 numbers), "
                            f"found shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise SequenceError(f"{where}: 'world_from_canonical' contains NaN or infinite numbers")
    return matrix


def decompose(matrix):
    """(location (3,), rotation (3, 3) proper, scale (3,)) with matrix = T @ R @ diag(scale); raises
    ValueError when `matrix` is not that (projective last row, singular, shear)."""
    matrix = np.asarray(matrix, dtype=float)
    if np.abs(matrix[3] - (0.0, 0.0, 0.0, 1.0)).max() > 1e-9:
        raise ValueError("is not affine (its last row is not 0 0 0 1)")
    linear = matrix[:3, :3]
    scale = np.linalg.norm(linear, axis=0)
    if scale.min() <= 1e-12 * max(1.0, scale.max()):
        raise ValueError("is singular (a zero scale)")
    rotation = linear / scale
    if np.linalg.det(rotation) < 0.0:  # a mirror: a negative x scale
        scale[0], rotation[:, 0] = -scale[0], -rotation[:, 0]
    if np.abs(rotation.T @ rotation - np.eye(3)).max() > ORTHONORMAL_TOLERANCE:
        raise ValueError("has shear: only translation, rotation and scale can be keyed")
    return matrix[:3, 3].copy(), rotation, scale


# ---------------------------------------------------------------------------------------------
# Building

def read_meshes(sequence, cache_bytes=CACHE_BYTES):
    """Read every distinct mesh file of `sequence` (so all are known to be good before anything is
    created); returns {path: read_ply arrays, or None for one read again when building because the
    cache was full}. Raises SequenceError naming the sequence, the frame and the mesh file."""
    meshes, budget = {}, cache_bytes
    for entry in sequence.frames:
        if entry.mesh in meshes:
            continue
        arrays = _read_mesh(sequence, entry)
        size = sum(a.nbytes for a in arrays if a is not None)
        if size <= budget:
            meshes[entry.mesh], budget = arrays, budget - size
        else:
            meshes[entry.mesh] = None
    return meshes


def _read_mesh(sequence, entry):
    try:
        return read_ply(entry.mesh)
    except PlyError as exc:  # its message names the mesh file
        raise SequenceError(f"{sequence.path}: frames[{entry.entry}] (frame {entry.frame}): {exc}") from None


def visibility_keys(frames):
    """For sorted distinct `frames`: per frame, the (frames, hidden values) keys that show its object
    from its frame until the next frame (one frame for the last) and hide it everywhere else."""
    keys = []
    for i, frame in enumerate(frames):
        end = frames[i + 1] if i + 1 < len(frames) else frame + 1
        keys.append(([frame - 1, frame, end], [1.0, 0.0, 1.0]))
    return keys


def build_sequence(sequence, name=None, parent_collection=None, scene=None):
    """One object per frame of `sequence` (from read_sequence) in a new collection named `name`
    (default: the sequence's), linked into `parent_collection` (default: the scene's collection);
    sets the scene's frame range to the sequence's. Returns a SequenceBuild(collection, objects in
    frame order). Every mesh file is read before anything is created; if anything fails, whatever
    was created is removed again and the error (SequenceError for a bad mesh file) propagates."""
    scene = scene or bpy.context.scene
    parent_collection = parent_collection or scene.collection
    meshes = read_meshes(sequence)
    material_name = builders.MATERIAL_NAME
    had_material = bpy.data.materials.get(material_name) is not None
    canonical = sequence.coordinates == "canonical"
    frames = [entry.frame for entry in sequence.frames]
    users = collections.Counter(entry.mesh for entry in sequence.frames)

    created = []  # removed again, newest first, if anything below fails
    try:
        collection = bpy.data.collections.new(name or sequence.name)
        created.append(collection)
        prefix = collection.name  # Blender's unique name: a second import's objects follow it
        collection[PROP_SEQUENCE] = sequence.path
        collection[PROP_COORDINATES] = sequence.coordinates
        collection[PROP_FRAME_COUNT] = len(frames)
        datas, objects = {}, []
        for entry, (key_frames, hidden) in zip(sequence.frames, visibility_keys(frames)):
            label = f"{prefix} {entry.frame:06d}"
            mesh = datas.get(entry.mesh)
            if mesh is None:
                arrays = meshes.pop(entry.mesh, None) or _read_mesh(sequence, entry)
                stem = os.path.splitext(os.path.basename(entry.mesh))[0]
                mesh = _mesh(label if users[entry.mesh] == 1 else f"{prefix} {stem}", arrays, created)
                datas[entry.mesh] = mesh
                del arrays
            obj = bpy.data.objects.new(label, mesh)
            created.append(obj)
            collection.objects.link(obj)
            obj[PROP_FRAME] = entry.frame
            obj[PROP_MESH] = entry.mesh
            if entry.seconds is not None:
                obj[PROP_SECONDS] = entry.seconds
            if entry.world_from_canonical is not None:
                obj[PROP_WORLD_FROM_CANONICAL] = [float(x) for x in entry.world_from_canonical.ravel()]
            first = not objects
            obj.hide_viewport = obj.hide_render = not first  # as at the first frame, made current below
            values = [[v] for v in hidden]
            builders._keyframes(obj, "hide_viewport", key_frames, values, created)
            builders._keyframes(obj, "hide_render", key_frames, values, created)
            if canonical:
                _place(obj, entry, created)
            objects.append(obj)
        parent_collection.children.link(collection)
        scene.frame_start = frames[0]
        scene.frame_end = frames[-1]
        scene.frame_current = frames[0]
    except BaseException:
        builders._remove(created)
        material = bpy.data.materials.get(material_name)
        if not had_material and material is not None and material.users == 0:
            bpy.data.materials.remove(material)
        raise
    return SequenceBuild(collection, objects)


def _mesh(name, arrays, created):
    """A mesh datablock from read_ply's arrays (addon.scene.mesh_from_arrays), recorded in `created`."""
    mesh = builders.mesh_from_arrays(name, arrays)
    created.append(mesh)
    return mesh


def _place(obj, entry, created):
    """A canonical frame's object: world_from_canonical as location, rotation and scale, set and keyed
    (constant) at its frame."""
    location, rotation, scale = decompose(entry.world_from_canonical)
    quaternion = Matrix(rotation.tolist()).to_quaternion()
    obj.rotation_mode = 'QUATERNION'
    obj.location, obj.rotation_quaternion, obj.scale = location.tolist(), quaternion, scale.tolist()
    frame = [entry.frame]
    builders._keyframes(obj, "location", frame, [location], created)
    builders._keyframes(obj, "rotation_quaternion", frame, [quaternion[:]], created)
    builders._keyframes(obj, "scale", frame, [scale], created)
