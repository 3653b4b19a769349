"""dynamic: the synthetic moving, deforming torus (demo.dynamic_scene) trained frame by frame, with and
without global transformation prediction (`python3 build.py bench dynamic`; runs `sequence` too)."""
import json
import os
import shutil
import subprocess
import tempfile

from bench.engine_run import last_event
from bench.harness import OUT, device_label, fmt, mean, today, train, venv_json
from bench.machine import machine_info
from tools import REPO, BuildError, log
from tools.env import ensure_setup
from tools.sandbox import isolated_env

SPEC = {
    "title": "dynamic: a moving, deforming object trained frame by frame",
    "includes": ["sequence"],
    "columns": ["date", "cpu", "cores", "device", "backend", "preset", "prediction", "frames", "cameras",
                "size px", "steps", "first frame s", "s/frame", "wall s", "chamfer % mean", "chamfer % max",
                "F@1% mean", "rotation err deg mean", "rotation err deg max", "translation err % mean",
                "translation err % max", "surface rotation err deg mean", "surface rotation err deg max",
                "surface translation err % mean", "deformation's rotation deg max", "chamfer % per frame"],
    "key": ["cpu", "cores", "device", "backend", "preset", "prediction", "frames", "cameras", "size px", "steps"],
}
DYNAMIC_OUT = os.path.join(OUT, "dynamic")
DYNAMIC_DATA = os.path.join(DYNAMIC_OUT, "data")


def dynamic_dataset(python, options, env):
    """demo.dynamic_scene's dataset in demo/out/dynamic/data, rendered unless one with the same frames,
    cameras, size and samples is there."""
    folder = DYNAMIC_DATA
    size = options.size or 128
    wanted = {"cameras": options.cameras, "size": [size, size], "samples": options.samples}
    try:
        with open(os.path.join(folder, "truth", "motion.json"), encoding="utf-8") as f:
            motion = json.load(f)
        if len(motion["frames"]) == options.frames and all(motion.get(k) == v for k, v in wanted.items()):
            log("bench", f"dynamic: reusing the rendered dataset {os.path.relpath(folder, REPO)}")
            return folder
    except (OSError, ValueError, KeyError):
        pass
    log("bench", f"dynamic: rendering {options.frames} frames x {options.cameras} cameras at {size} px")
    result = subprocess.run([python, "-m", "demo.dynamic_scene", folder, "--frames", str(options.frames),
                             "--cameras", str(options.cameras), "--size", str(size),
                             "--samples", str(options.samples)], cwd=REPO, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise BuildError(f"dynamic: rendering the dataset failed (exit {result.returncode})")
    return folder


def fitted(frames, key):
    """The frames' `key` where bench.dynamic_eval could fit the true surface's rigid motion."""
    return [f[key] for f in frames if key in f]


def dynamic_row(machine, started, prediction, metrics, wall_s, options, date=None):
    """One row of the dynamic table from the engine's `started` event and bench.dynamic_eval's metrics."""
    config = started.get("config") or {}
    frames = metrics["frames"]
    later = frames[1:]
    return {
        "date": date or today(), "cpu": machine["cpu"], "cores": str(machine["cores"]),
        "device": device_label(started, machine), "backend": started.get("backend") or "?",
        "preset": config.get("preset", "?"),
        "prediction": "on" if prediction else "off", "frames": str(len(frames)), "cameras": str(metrics["cameras"]),
        "size px": "x".join(str(x) for x in metrics["size"]),
        "steps": f"{config['train']['iterations']} + {config['dynamic']['frame_iterations']}"
                 + (f" + {config['dynamic']['prediction_iterations']}" if prediction else ""),
        "first frame s": fmt(frames[0]["seconds"], 1), "s/frame": fmt(mean([f["seconds"] for f in later]), 1),
        "wall s": fmt(wall_s, 0),
        "chamfer % mean": fmt(mean([f["chamfer"] for f in frames]), 3, 100.0),
        "chamfer % max": fmt(max(f["chamfer"] for f in frames), 3, 100.0),
        "F@1% mean": fmt(mean([f["f_1"] for f in frames]), 3),
        "rotation err deg mean": fmt(mean([f["rotation_deg"] for f in later]), 2),
        "rotation err deg max": fmt(max((f["rotation_deg"] for f in later), default=None), 2),
        "translation err % mean": fmt(mean([f["translation"] for f in later]), 2, 100.0),
        "translation err % max": fmt(max((f["translation"] for f in later), default=None), 2, 100.0),
        "surface rotation err deg mean": fmt(mean(fitted(later, "rotation_fit_deg")), 2),
        "surface rotation err deg max": fmt(max(fitted(later, "rotation_fit_deg"), default=None), 2),
        "surface translation err % mean": fmt(mean(fitted(later, "translation_fit")), 2, 100.0),
        "deformation's rotation deg max": fmt(max(fitted(later, "fit_deg"), default=None), 2),
        "chamfer % per frame": " ".join(fmt(f["chamfer"], 2, 100.0) for f in frames),
    }


def run(options):
    """Train the synthetic dynamic scene with and without global transformation prediction; one row each."""
    python = ensure_setup(quiet=True)
    machine = machine_info()
    folder = tempfile.mkdtemp(prefix="marble-bench-dynamic-")
    rows = []
    try:
        env = isolated_env(folder)
        data = dynamic_dataset(python, options, env)
        for prediction in (True, False):
            name = "dynamic " + ("with" if prediction else "without") + " prediction"
            job = os.path.join(DYNAMIC_OUT, "job_" + ("prediction" if prediction else "no_prediction"))
            extra = ["--resolution", str(options.resolution)] + (
                [] if prediction else ["--set", "dynamic.predict_transform=false"])
            run_, started = train(python, name, data, job, options, env, extra)
            sequence = last_event(run_["events"], "done")["outputs"]["sequence"]
            metrics = venv_json(python, ["-m", "bench.dynamic_eval", sequence, data], env,
                                f"{name}: evaluating the sequence")
            rows.append(dynamic_row(machine, started, prediction, metrics, run_["wall_s"], options))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows
