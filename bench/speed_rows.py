"""The speed benchmark's table (standard library only): its columns, the memory floor, and the
docs/benchmarks.md rows built from a result of `python -m bench.speed_probe --json` (here, on a GPU
machine, or from a file with `python3 build.py bench speed --from-json`)."""
import json
import math
import os
import tempfile

from tools import REPO

PARTS = ("encoding", "train", "dtu", "dynamic")
DEFAULT_TRAIN_DATA = os.path.join(REPO, "demo", "out", "speed", "torus")
DEFAULT_DYNAMIC_DATA = os.path.join(REPO, "demo", "out", "dynamic", "data")
DEFAULT_POINTS = (18, 20)
TRAIN_ITERATIONS = {"cpu": 20, "cuda": 1000}   # a fast-preset step takes seconds on a CPU
TRAIN_MESH_RESOLUTION = 32                     # the train part times steps; its mesh only ends the job
# Targets of the issue, on one H100.
ENCODING_TARGET_RATIO = 2.0
DTU_TARGET_MINUTES = 3.0
DYNAMIC_TARGET_SECONDS = 15.0

COLUMNS = ["date", "part", "workload", "cpu", "cores", "gpu", "device", "backend", "tables", "preset",
           "torch", "triton", "copy GB/s", "ms", "M points/s", "floor M points/s", "x floor", "it/s",
           "M samples/s", "minutes", "s/frame", "target", "met", "notes"]
KEY = ["part", "workload", "cpu", "cores", "gpu", "device", "backend", "tables", "preset"]


def floor_bytes_per_point(levels, features, table_bytes, taps=1):
    """Bytes one point's encoding forward + backward must move at least, counting every lookup.

    Per level and lookup: the 8 corners' features read in the forward (table_bytes each: 2 for a
    float16 table, 4 for float32), their float32 gradients accumulated in the backward (an atomic
    add reads and writes: 8 bytes a value), the output written and its gradient read back (4 bytes a
    feature each way); plus the point read once (3 float32). taps: lookups per point (7 for the point
    and its 6 central-difference taps)."""
    per_lookup_level = features * (8 * table_bytes + 8 * 8 + 2 * 4)
    return 12 + taps * levels * per_lookup_level



def _num(value, digits=3):
    """`digits` significant digits, without an exponent ('' for None)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    value = float(value)
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def _met(ok):
    return "" if ok is None else ("yes" if ok else "no")


def _base_row(machine_info, entry=None):
    entry = entry or {}
    device = entry.get("device") or machine_info.get("device") or "?"
    return {"date": machine_info.get("date", ""), "cpu": machine_info.get("cpu", "?"),
            "cores": str(machine_info.get("cores", "?")), "gpu": machine_info.get("gpu") or "-",
            "device": device, "torch": machine_info.get("torch") or "", "triton": machine_info.get("triton") or "-",
            "preset": entry.get("preset") or "fast", "backend": entry.get("backend") or "?",
            "tables": _tables(entry.get("half_table"))}


def _rate(entry):
    """The training rate's cells of a train or dtu entry."""
    return {"it/s": _num(entry.get("it_per_s")),
            "M samples/s": _num(entry["samples_per_s"] / 1e6 if entry.get("samples_per_s") else None)}


def _tables(half):
    return "" if half is None else ("fp16" if half else "fp32")


def _size(rig):
    size = rig.get("size")
    return f"{size[0]}x{size[1]}" if size else "?"


def _settings(entry):
    return "".join(f"; {assignment}" for assignment in entry.get("settings") or [])


def _steps(entry):
    if entry.get("first") is None:
        return ""
    text = f"steps {entry['first']}-{entry['last']}"
    if entry.get("levels"):
        low, high = entry["levels"]
        text += f", {low if low == high else f'{low}-{high}'} levels"
    if entry.get("samples_per_step"):
        text += f", {_num(entry['samples_per_step'] / 1e6)} M samples/step"
    return text


def encoding_row(machine_info, entry, bandwidth):
    log2 = entry["log2_points"]
    points = f"2^{int(log2)}" if float(log2).is_integer() else str(entry["points"])
    taps = entry["part"] == "taps"
    grid = entry.get("grid") or {}
    ratio = entry.get("ratio")
    row = _base_row(machine_info, entry)
    row.update({
        "part": entry["part"], "workload": f"{points} points" + (" x 7 taps" if taps else ""),
        "copy GB/s": _num(bandwidth / 1e9 if bandwidth else None),
        "ms": _num(entry["seconds"] * 1e3), "M points/s": _num(entry["points_per_s"] / 1e6),
        "floor M points/s": _num(entry["floor_points_per_s"] / 1e6 if entry.get("floor_points_per_s") else None),
        "x floor": _num(ratio),
        "target": "" if taps else f"< {ENCODING_TARGET_RATIO:g}x floor (H100)",
        "met": "" if taps else _met(None if ratio is None else ratio < ENCODING_TARGET_RATIO),
        "notes": (f"{grid.get('levels')}x{grid.get('features')}, 2^{grid.get('log2_table')}; "
                  f"{entry['floor_bytes_per_point']} B/point floor; {entry['reps']} runs"),
    })
    return row


def train_row(machine_info, entry):
    rig = entry.get("rig") or {}
    row = _base_row(machine_info, entry)
    row.update({
        "part": "train",
        "workload": f"{entry['data']} {rig.get('views', entry.get('views') or '?')} views {_size(rig)}, "
                    f"{entry['iterations']} it" + _settings(entry),
        **_rate(entry),
        "notes": _steps(entry) + ("; timed out" if entry.get("timed_out") else ""),
    })
    return row


def dtu_row(machine_info, entry):
    rig = entry.get("rig") or {}
    minutes = entry["mesh_wall_s"] / 60.0 if entry.get("mesh_wall_s") is not None else None
    row = _base_row(machine_info, entry)
    notes = _steps(entry)
    if minutes is None:
        notes = (f"no mesh: {'timed out' if entry.get('timed_out') else 'failed'} at iteration "
                 f"{entry.get('reached')} after {entry['wall_s'] / 60:.1f} min; " + notes)
    row.update({
        "part": "dtu",
        "workload": f"scan24 {rig.get('views', entry.get('views') or '?')} views {_size(rig)}, "
                    f"{entry.get('iterations') or '?'} it" + _settings(entry),
        **_rate(entry),
        "minutes": _num(minutes), "target": f"< {DTU_TARGET_MINUTES:g} min (H100)",
        "met": _met(None if minutes is None else minutes < DTU_TARGET_MINUTES), "notes": notes,
    })
    return row


def dynamic_row(machine_info, entry):
    rig = entry.get("rig") or {}
    seconds = entry.get("seconds_per_frame")
    steps = f"{entry.get('first_iterations')} + {entry.get('frame_iterations')}"
    if entry.get("predict", True):
        steps += f" + {entry.get('prediction_iterations')}"
    frames = entry.get("frame_seconds") or []
    trained, total = entry.get("frames_trained"), rig.get("frames", "?")
    row = _base_row(machine_info, entry)
    row.update({
        "part": "dynamic",
        "workload": (f"{trained} of {total}" if trained and trained != total else f"{total}")
                    + f" frames x {rig.get('cameras', '?')} cameras {_size(rig)}, "
                    f"{steps} it, mesh {entry.get('resolution')}" + _settings(entry),
        "s/frame": _num(seconds), "target": f"< {DYNAMIC_TARGET_SECONDS:g} s (H100)",
        "met": _met(None if seconds is None else seconds < DYNAMIC_TARGET_SECONDS),
        "notes": (f"first frame {_num(frames[0])} s; " if frames else "")
                 + f"{max(0, len(frames) - 1)} later frames" + ("; timed out" if entry.get("timed_out") else ""),
    })
    return row


def build_rows(result):
    """The docs/benchmarks.md rows (COLUMNS, all strings) of a result."""
    info = result.get("machine") or {}
    bandwidth = (result.get("copy") or {}).get("bytes_per_s")
    rows = [encoding_row(info, entry, entry.get("copy_bytes_per_s") or bandwidth)
            for entry in result.get("encoding") or []]
    rows += [train_row(info, entry) for entry in result.get("train") or []]
    if result.get("dtu"):
        rows.append(dtu_row(info, result["dtu"]))
    if result.get("dynamic"):
        rows.append(dynamic_row(info, result["dynamic"]))
    if info.get("device") == "cpu" and info.get("load") is not None:
        for row in rows:
            row["notes"] = "; ".join(filter(None, [row.get("notes"), f"load {info['load']:.1f} at start"]))
    return [{column: row.get(column, "") for column in COLUMNS} for row in rows]


def write_json(path, result):
    result["rows"] = build_rows(result)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False, encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    os.replace(f.name, path)

