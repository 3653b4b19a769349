"""speed: hash encoding against its memory floor, training rate, DTU scan 24 to a mesh, a dynamic frame
(`python3 build.py bench speed`).

The measuring is bench.speed_probe's (torch only, no Blender, so a GPU machine's own Python runs it);
this side renders the datasets it needs with Blender (`--prepare` only renders them, for carrying to
a GPU machine), runs the probe in the .venv, or merges the rows of a probe's --json file
(`--from-json`)."""
import json
import os
import shlex
import shutil
import subprocess
import tempfile

from bench import speed_rows
from bench.dynamic import dynamic_dataset
from tools import REPO, BuildError, log
from tools.env import ensure_setup, has_nvidia_gpu
from tools.sandbox import isolated_env
from tools.shared_data import shared_data_dir

SPEC = {
    "title": "speed: hash encoding against its memory floor, training rate, DTU scan 24, a dynamic frame",
    "columns": speed_rows.COLUMNS,
    "key": speed_rows.KEY,
}
SPEED_OUT = os.path.join(REPO, "demo", "out", "speed")
SPEED_TORUS = {"views": 40, "size": 160, "samples": 16}


def speed_torus(python, env):
    """The demo torus for the train part in demo/out/speed/torus (the probe's default), rendered
    with Cycles unless one with the same views and size is there."""
    folder = speed_rows.DEFAULT_TRAIN_DATA
    try:
        with open(os.path.join(folder, "transforms.json"), encoding="utf-8") as f:
            rig = json.load(f)
        if (len(rig["frames"]) == SPEED_TORUS["views"] and rig.get("w") == rig.get("h") == SPEED_TORUS["size"]
                and all(os.path.exists(os.path.join(folder, frame["file_path"])) for frame in rig["frames"])):
            log("bench", f"speed: reusing the rendered torus {os.path.relpath(folder, REPO)}")
            return folder
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log("bench", f"speed: rendering the torus ({SPEED_TORUS['views']} views at {SPEED_TORUS['size']} px) into "
        f"{os.path.relpath(folder, REPO)}")
    result = subprocess.run([python, "-m", "demo.scene", folder, "--views", str(SPEED_TORUS["views"]),
                             "--size", str(SPEED_TORUS["size"]), "--samples", str(SPEED_TORUS["samples"])],
                            cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"speed: rendering the torus failed (exit {result.returncode}):\n"
                         f"{(result.stdout + result.stderr)[-3000:]}")
    return folder


def speed_rows_from_json(paths):
    """The rows of bench.speed_probe results (--json files, e.g. from a GPU machine), rebuilt from their
    measurements by the same row builders; BuildError for a file that is not one."""
    rows = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                result = json.load(f)
        except (OSError, ValueError) as exc:
            raise BuildError(f"--from-json {path}: cannot read it: {exc}") from None
        if not isinstance(result, dict) or result.get("benchmark") != "speed" or "machine" not in result:
            raise BuildError(f"--from-json {path}: not a result of `python -m bench.speed_probe --json`")
        found = speed_rows.build_rows(result)
        log("bench", f"speed: {len(found)} rows from {path} ({result['machine'].get('gpu') or result['machine'].get('cpu')}, "
            f"{result['machine'].get('date')})")
        for part, why in (result.get("skipped") or {}).items():
            log("bench", f"speed: {path}: {part} skipped there: {why}")
        rows += found
    return rows


def probe_command(python, options, result_path):
    """The .venv's `python -m bench.speed_probe` command for these options."""
    parts = getattr(options, "parts", None) or []
    command = [python, "-m", "bench.speed_probe", "--json", result_path]
    if parts:
        command += ["--parts", ",".join(parts)]
    if getattr(options, "backends", None):
        command += ["--backends", ",".join(options.backends)]
    if getattr(options, "points", None):
        command += ["--points", ",".join(str(p) for p in options.points)]
    if options.iterations:
        command += ["--train-iterations", str(options.iterations)]
    data_dir = shared_data_dir("dtu_scan24")
    if data_dir:
        command += ["--dtu", os.path.join(data_dir, "dtu_scan24")]
    return command


def run(options):
    """Encoding forward+backward per backend against its memory floor, fast-preset training rate, and
    (CUDA, or asked for) DTU scan 24 to a mesh and seconds per dynamic frame: one row per measurement."""
    if getattr(options, "from_json", None):
        return speed_rows_from_json(options.from_json)
    parts = getattr(options, "parts", None) or []
    unknown = [p for p in parts if p not in speed_rows.PARTS]
    if unknown:
        raise BuildError(f"unknown speed part(s) {', '.join(unknown)}; known: {', '.join(speed_rows.PARTS)}")
    python = ensure_setup(quiet=True)
    prepare = getattr(options, "prepare", False)
    folder = tempfile.mkdtemp(prefix="marble-bench-speed-")
    try:
        env = isolated_env(folder)
        # The datasets need Blender (bpy, in .venv): rendered here, carried to a GPU machine that lacks it.
        if prepare or not parts or "train" in parts:
            speed_torus(python, env)
        if prepare or "dynamic" in parts or (not parts and has_nvidia_gpu()):  # on CUDA it runs by default
            dynamic_dataset(python, options, env)
        if prepare:
            carry = [os.path.relpath(p, REPO) for p in (speed_rows.DEFAULT_TRAIN_DATA, speed_rows.DEFAULT_DYNAMIC_DATA)]
            log("bench", "speed: datasets ready. On a GPU machine (its own python3 with torch; no Blender needed), "
                f"with {' and '.join(carry)} copied into the same places of the checkout, run from the "
                "repository root: `python3 -m bench.speed_probe --json speed.json` (add --parts, --timeout-s S to "
                "fit its time), then here: `python3 build.py bench speed --from-json speed.json`")
            return []
        os.makedirs(SPEED_OUT, exist_ok=True)
        result_path = os.path.join(SPEED_OUT, "result.json")
        if os.path.exists(result_path):
            os.remove(result_path)
        command = probe_command(python, options, result_path)
        log("bench", f"speed: {shlex.join(command[1:])}")
        code = subprocess.call(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    try:
        with open(result_path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError):
        raise BuildError(f"the speed benchmark failed (exit {code}) and wrote no result") from None
    # The probe prints each failure; the table still gets what it measured.
    options.failed.extend(failure.split(":")[0] for failure in result.get("failed") or [])
    return speed_rows.build_rows(result)
