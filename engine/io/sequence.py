"""sequence.json: a dynamic job's frames, read and checked, and written (standard library and numpy).

The file (written by the engine's dynamic trainer into JOB/meshes/, read by the add-on):

    {"coordinates": "world" | "canonical",          # optional, "world" when absent
     "frames": [{"frame": 123,                       # Blender frame, an integer, each once
                 "mesh": "frame_000123.ply",          # absolute, or relative to the json's folder
                 "world_from_canonical": [[...4...] x 4],   # row-major 4x4
                 "seconds": 4.1}, ...]}               # optional: the engine's seconds on the frame

"world": the meshes are in the rig's world coordinates. "canonical": the meshes are in a canonical
space and each frame is placed by its world_from_canonical, which must be a translation, rotation and
(possibly negative, non-uniform) scale: shear cannot be keyed in Blender. world_from_canonical is
required for canonical sequences and optional (but checked when present) for world ones.
"""
import collections
import json
import math
import os

import numpy as np

from .ply import PlyError, read_ply
from .protocol import MESHES_DIR, SEQUENCE_FILE, write_atomic

COORDINATES = ("world", "canonical")
MAX_FRAME = 1048574              # Blender's frame range: Scene.frame_start/frame_end lie in [0, MAX_FRAME]
ORTHONORMAL_TOLERANCE = 1e-4     # |R^T R - I| above this: world_from_canonical has shear
# Mesh arrays kept in memory between reading every file and building: beyond this many bytes, files
# are read (and so checked) first and read again while building, so memory stays bounded.
CACHE_BYTES = 512 * 2 ** 20


class SequenceError(ValueError):
    """A sequence that cannot be imported; the message names the file (and the entry)."""


SequenceFrame = collections.namedtuple("SequenceFrame", "frame mesh world_from_canonical seconds entry")
Sequence = collections.namedtuple("Sequence", "path name coordinates frames")


def sequence_path(job_dir):
    """A job's meshes/sequence.json (whether or not it exists)."""
    return os.path.join(job_dir, MESHES_DIR, SEQUENCE_FILE)


def write_sequence(path, coordinates, entries):
    """Write sequence.json atomically: `entries` are dicts with frame, mesh (relative to the file's
    folder) and optionally world_from_canonical and seconds; one line per frame, sorted by frame,
    because the engine rewrites the file after every frame of sequences hundreds long."""
    frames = ",\n  ".join(json.dumps(e, separators=(",", ":")) for e in sorted(entries, key=lambda e: e["frame"]))
    write_atomic(path, f'{{"coordinates": {json.dumps(coordinates)},\n "frames": [\n  {frames}]}}\n')
    return path


def find_sequence_file(path):
    """The sequence.json for `path`: the file itself, or a folder's sequence.json or meshes/sequence.json
    (so a job folder works too)."""
    if os.path.isdir(path):
        for candidate in (os.path.join(path, SEQUENCE_FILE), os.path.join(path, MESHES_DIR, SEQUENCE_FILE)):
            if os.path.isfile(candidate):
                return candidate
        raise SequenceError(f"{path}: no {SEQUENCE_FILE} in this folder or in its meshes folder")
    return path


def sequence_name(path):
    """The job's name for JOB/meshes/sequence.json; otherwise the file's stem, or its folder's name
    when the stem is just 'sequence'."""
    folder, base = os.path.split(os.path.abspath(path))
    stem = os.path.splitext(base)[0]
    if os.path.basename(folder) == MESHES_DIR and os.path.basename(os.path.dirname(folder)):
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
        frame = _read_entry(f"{path}: frames[{index}]", folder, index, entry, coordinates)
        if frame.frame in seen:
            raise SequenceError(f"{path}: frames[{index}]: frame {frame.frame} appears twice "
                                f"(also frames[{seen[frame.frame]}])")
        seen[frame.frame] = index
        frames.append(frame)
    frames.sort(key=lambda f: f.frame)
    return Sequence(path, sequence_name(path), coordinates, tuple(frames))


def _read_entry(where, folder, index, entry, coordinates):
    """One frame's entry checked; `where` starts every error message (the file and the entry)."""
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
    where = f"{where} (frame {frame})"
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


def entry_from_event(event, coordinates="world"):
    """The SequenceFrame of a dynamic job's `mesh` event (its frame, path, world_from_canonical,
    seconds), checked as a sequence.json entry is; `coordinates` is the job's, used when the event
    does not say. Returns (coordinates, SequenceFrame); raises SequenceError naming the frame and file."""
    frame = event.get("frame")
    coordinates = event.get("coordinates") or coordinates
    if coordinates not in COORDINATES:
        raise SequenceError(f"mesh event of frame {frame}: 'coordinates' is {coordinates!r}; "
                            f"expected 'world' or 'canonical'")
    path = event.get("path")
    entry = {"frame": frame, "mesh": path,
             **{key: event[key] for key in ("world_from_canonical", "seconds") if event.get(key) is not None}}
    folder = os.path.dirname(str(event.get("sequence") or path or ""))
    return coordinates, _read_entry("mesh event", folder, None, entry, coordinates)


def count_frames(path):
    """How many frames a sequence.json lists (0 when it cannot be read); no checks, no meshes read."""
    try:
        with open(path, "rb") as f:
            frames = json.loads(f.read().decode("utf-8")).get("frames")
    except (OSError, ValueError, AttributeError):
        return 0
    return len(frames) if isinstance(frames, list) else 0


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
    return read_frame_mesh(entry, f"{sequence.path}: frames[{entry.entry}] (frame {entry.frame})")


def read_frame_mesh(entry, where=""):
    """read_ply's arrays of one frame's mesh file; the SequenceError names the file, after `where`."""
    prefix = f"{where}: " if where else ""
    try:
        return read_ply(entry.mesh)
    except PlyError as exc:  # its message names the mesh file
        raise SequenceError(f"{prefix}{exc}") from None
    except OSError as exc:
        raise SequenceError(f"{prefix}{entry.mesh}: cannot be read ({exc.strerror or exc})") from None
