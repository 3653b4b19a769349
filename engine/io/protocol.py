"""The engine's event schema and job-directory layout (standard library only).

The engine prints one JSON object per line on stdout; the add-on reads them. Both sides import this
module, so the names below are the single source of truth for the contract in docs/design.md.
"""
import json
import math
import os
import tempfile

# Every event has "event" (one of these) and "t" (seconds since the engine started).
# Dynamic jobs (a rig with several frames) add the fields after the semicolons.
STARTED = "started"      # config (resolved dict), device, backend, half_table, job, data (the rig file), views,
                         # appearance (the per-image embedding is on);
                         # dynamic (true), frames [F...], coordinates; calibrate: command ("calibrate"), images
                         # (the photographs' folder or the video), out (the dataset folder), count, video
STAGE = "stage"          # name: one of STAGES; "calibrate" has phase (one of CALIBRATE_PHASES); "train" has region {center, radius} (and frame, after a later
                         # frame's prediction); "frame" has frame, index, count; "predict" and "extract" frame
PROGRESS = "progress"    # iteration, total, loss, losses {term: value}, psnr, eta_s, frame (None for a static
                         # job), levels (active hash-grid levels), inv_s (NeuS sharpness), it_per_s, rays (rays in the batch of the step just done), samples (samples
                         # that step evaluated with gradients: normals, colour, backward; rays x samples
                         # per ray after empty-space skipping and early termination); frame_index,
                         # frame_count, phase ("predict" | "train"), sequence_progress (0-1);
                         # iteration/total count within the frame's phase, eta_s is for the whole job;
                         # calibrate: phase, iteration/total (images, pairs or registered images in that
                         # phase), fraction (0-1 over the whole calibration), eta_s
PREVIEW = "preview"      # path of a coarse mesh written during training, iteration
MESH = "mesh"            # path, frame (None for a static job), vertices, faces; iteration, loss, seconds (the frame's),
                         # world_from_canonical (4x4 rows), coordinates, sequence (sequence.json, rewritten)
WARNING = "warning"      # message
ERROR = "error"          # message a user can act on
DONE = "done"            # outputs {"mesh": path}; dynamic: {"sequence": path, "meshes": folder, "frames": N};
                         # evaluate: {"eval": folder, "psnr", "mask_iou"}; curves: {"curves": path};
                         # calibrate: {"dataset", "transforms", "points", "registered", "images"}
CANCELLED = "cancelled"  # checkpoint (path or None), iteration; dynamic: frame
EVENT_KINDS = (STARTED, STAGE, PROGRESS, PREVIEW, MESH, WARNING, ERROR, DONE, CANCELLED)
FINAL_EVENTS = (DONE, ERROR, CANCELLED)
STAGES = ("calibrate", "load", "train", "extract", "frame", "predict", "export")
CALIBRATE_PHASES = ("read", "features", "matching", "mapping", "write")
# `python -m engine export`: stage "export", progress events with phase (one of these), iteration/total
# within it and fraction (0-1 over the export); done outputs {"export": path, "format", "vertices",
# "faces", "texture" (the PNG, or None), "frame"}; a dynamic job's USD: {"export": path, "format": "usd",
# "frames": N}.
EXPORT_PHASES = ("extract", "decimate", "unwrap", "bake", "write")
EXPORT_FORMATS = ("glb", "obj", "ply", "usd")

# A line "cancel" on the engine's stdin asks it to stop (as SIGINT/SIGTERM do).
CANCEL_LINE = "cancel"

# Exit codes of `python -m engine`.
EXIT_OK = 0
EXIT_FAILED = 1       # an unexpected failure (bug, out of memory); an error event was still printed
EXIT_BAD_INPUT = 2    # the input cannot be used; the error event says what and where
EXIT_CANCELLED = 3    # stopped on request after saving a checkpoint

# Job directory layout.
CONFIG_FILE = "config.json"
EVENTS_FILE = "events.jsonl"
NORMALIZATION_FILE = "normalization.json"
CHECKPOINTS_DIR = "checkpoints"
MESHES_DIR = "meshes"
PREVIEWS_DIR = "previews"
STATIC_MESH_FILE = "mesh.ply"
SEQUENCE_FILE = "sequence.json"       # a dynamic job's frames, in MESHES_DIR
FRAME_MESH_FILE = "frame_{:06d}.ply"  # a dynamic job's mesh of one frame, in MESHES_DIR
LOG_FILE = "engine.log"  # stderr of the engine, kept by the add-on
CURVES_FILE = "curves.png"  # loss and PSNR against iteration, redrawn at each checkpoint
TEXTURED_MESH_STEM = "mesh_textured"  # in MESHES_DIR: mesh_textured.glb, or .obj + .mtl + .png, or .ply
                                      # (decimated, vertex colours); a dynamic frame's frame_000123_textured.*
FRAME_TEXTURED_STEM = "frame_{:06d}_textured"  # a dynamic frame's export, in MESHES_DIR (+ .glb, .obj, ...)
USD_SEQUENCE_FILE = "sequence.usdc"  # a dynamic job's frames as one USD file of time-sampled meshes
RANKS_DIR = "ranks"  # a job spread over processes by torchrun: plan.json, first_frame.pt, one folder a rank after 0
DATASET_DIR = "dataset"  # in a job trained from photographs: the calibrated dataset (`calibrate`'s --out)

# A calibrated dataset (`python -m engine calibrate --out DATASET`).
TRANSFORMS_FILE = "transforms.json"
IMAGES_DIR = "images"
SPARSE_MODEL_DIR = os.path.join("sparse", "0")
POINTS_FILE = "points3D.ply"


_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would have given


def write_atomic(path, content):
    """Write `content` (str, as UTF-8, or bytes) to `path` through a temporary file renamed over it, so
    that readers never see half a file. The temporary name is unique (two writers never share it) and
    the file is removed when writing fails (a full disk leaves nothing half-made)."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, FILE_MODE)  # mkstemp's 0600 would hide the job's files from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, data):
    """`data` as indented JSON, written atomically (write_atomic)."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def make_event(kind, t, **fields):
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    event = {"event": kind, "t": round(float(t), 3)}
    event.update(fields)
    return event


def encode(event):
    """One event as one line of JSON (no newline inside, NaN written as null)."""
    return json.dumps(_finite(event), separators=(",", ":"))


def decode(line):
    """The event on a line of engine output, or None when the line is not an event."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") not in EVENT_KINDS:
        return None
    return event


def read_events(path):
    """All events of an events.jsonl file, skipping lines that are not events."""
    events = []
    # Bytes that are not UTF-8 (a damaged or foreign file) become U+FFFD: their lines are not events.
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            event = decode(line)
            if event is not None:
                events.append(event)
    return events


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
