"""scale: the dynamic benchmark's sequence trained by 1 and by more processes under torchrun (`python3
build.py bench scale [--processes 1,2]`): wall time and per-frame quality side by side."""
import os
import shutil
import tempfile

from bench.dynamic import DYNAMIC_OUT, dynamic_dataset
from bench.engine_run import last_event
from bench.harness import device_label, fmt, mean, today, train, venv_json
from bench.machine import machine_info
from tools import log
from tools.env import ensure_setup
from tools.sandbox import isolated_env

SPEC = {
    "title": "scale: a dynamic sequence spread over processes with torchrun",
    "columns": ["date", "cpu", "cores", "device", "backend", "preset", "processes", "frames", "cameras", "size px",
                "steps", "wall s", "speed-up", "chamfer % mean", "chamfer % max", "surface rotation err deg mean",
                "surface rotation err deg max", "chamfer % per frame"],
    "key": ["cpu", "cores", "device", "backend", "preset", "processes", "frames", "cameras", "size px", "steps"],
}


def scale_row(machine, started, processes, metrics, wall_s, single_wall_s, date=None):
    """One row from rank 0's `started` event, bench.dynamic_eval's metrics and the wall times of this
    run and of the one-process run (speed-up: theirs over this)."""
    config = started.get("config") or {}
    frames = metrics["frames"]
    later = [f for f in frames[1:] if "rotation_fit_deg" in f]
    return {
        "date": date or today(), "cpu": machine["cpu"], "cores": str(machine["cores"]),
        "device": device_label(started, machine), "backend": started.get("backend") or "?",
        "preset": config.get("preset", "?"), "processes": str(processes), "frames": str(len(frames)),
        "cameras": str(metrics["cameras"]), "size px": "x".join(str(x) for x in metrics["size"]),
        "steps": f"{config['train']['iterations']} + {config['dynamic']['frame_iterations']}"
                 f" + {config['dynamic']['prediction_iterations']}",
        "wall s": fmt(wall_s, 0),
        "speed-up": fmt(single_wall_s / wall_s if single_wall_s and wall_s else None, 2),
        "chamfer % mean": fmt(mean([f["chamfer"] for f in frames]), 3, 100.0),
        "chamfer % max": fmt(max(f["chamfer"] for f in frames), 3, 100.0),
        "surface rotation err deg mean": fmt(mean([f["rotation_fit_deg"] for f in later]), 2),
        "surface rotation err deg max": fmt(max((f["rotation_fit_deg"] for f in later), default=None), 2),
        "chamfer % per frame": " ".join(fmt(f["chamfer"], 2, 100.0) for f in frames),
    }


def run(options):
    """Train the dynamic scene with each of options.processes (default 1 and 2); one row each."""
    python = ensure_setup(quiet=True)
    machine = machine_info()
    counts = options.processes or [1, 2]
    folder = tempfile.mkdtemp(prefix="marble-bench-scale-")
    rows, single_wall_s = [], None
    try:
        env = isolated_env(folder)
        data = dynamic_dataset(python, options, env)
        for processes in counts:
            name = f"scale {processes} process{'es' if processes > 1 else ''}"
            job = os.path.join(DYNAMIC_OUT, f"job_scale_{processes}")
            run_, started = train(python, name, data, job, options, env, ["--resolution", str(options.resolution)],
                                  processes=processes)
            sequence = last_event(run_["events"], "done")["outputs"]["sequence"]
            metrics = venv_json(python, ["-m", "bench.dynamic_eval", sequence, data], env,
                                f"{name}: evaluating the sequence")
            if processes == 1:
                single_wall_s = run_["wall_s"]
            log("bench", f"{name}: {run_['wall_s']:.0f} s")
            rows.append(scale_row(machine, started, processes, metrics, run_["wall_s"], single_wall_s))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows
