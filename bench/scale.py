"""scale: the dynamic benchmark's sequence, and a static quality scene, trained by 1 and by more
processes under torchrun (`python3 build.py bench scale [--processes 1,2]`): wall time and quality side
by side."""
import os
import shutil
import tempfile

from bench.dynamic import DYNAMIC_OUT, dynamic_dataset
from bench.engine_run import last_event
from bench.harness import OUT, device_label, fmt, mean, today, train, venv_json
from bench.machine import machine_info
from tools import REPO, log
from tools.env import ensure_setup
from tools.sandbox import isolated_env

STATIC_SCENE = "spot"  # bench quality's rendered dataset (demo/out/quality/spot/data)
SPEC = {
    "title": "scale: a dynamic sequence and a static scene spread over processes with torchrun",
    "columns": ["date", "cpu", "cores", "device", "backend", "preset", "scene", "processes", "frames", "cameras",
                "size px", "steps", "wall s", "speed-up", "chamfer % mean", "chamfer % max",
                "surface rotation err deg mean", "surface rotation err deg max", "chamfer % per frame"],
    "key": ["cpu", "cores", "device", "backend", "preset", "scene", "processes", "frames", "cameras", "size px",
            "steps"],
}


def common(machine, started, scene, processes, wall_s, single_wall_s, date=None):
    """The columns every row has, from rank 0's `started` event and the wall times of this run and of
    the one-process run of the same scene (speed-up: theirs over this)."""
    config = started.get("config") or {}
    return {"date": date or today(), "cpu": machine["cpu"], "cores": str(machine["cores"]),
            "device": device_label(started, machine), "backend": started.get("backend") or "?",
            "preset": config.get("preset", "?"), "scene": scene, "processes": str(processes),
            "wall s": fmt(wall_s, 0),
            "speed-up": fmt(single_wall_s / wall_s if single_wall_s and wall_s else None, 2)}


def scale_row(machine, started, processes, metrics, wall_s, single_wall_s, date=None):
    """A dynamic run's row: bench.dynamic_eval's metrics per frame."""
    config = started.get("config") or {}
    frames = metrics["frames"]
    later = [f for f in frames[1:] if "rotation_fit_deg" in f]
    return dict(common(machine, started, "dynamic torus", processes, wall_s, single_wall_s, date),
                frames=str(len(frames)), cameras=str(metrics["cameras"]),
                **{"size px": "x".join(str(x) for x in metrics["size"]),
                   "steps": f"{config['train']['iterations']} + {config['dynamic']['frame_iterations']}"
                            f" + {config['dynamic']['prediction_iterations']}",
                   "chamfer % mean": fmt(mean([f["chamfer"] for f in frames]), 3, 100.0),
                   "chamfer % max": fmt(max(f["chamfer"] for f in frames), 3, 100.0),
                   "surface rotation err deg mean": fmt(mean([f["rotation_fit_deg"] for f in later]), 2),
                   "surface rotation err deg max": fmt(max((f["rotation_fit_deg"] for f in later), default=None), 2),
                   "chamfer % per frame": " ".join(fmt(f["chamfer"], 2, 100.0) for f in frames)})


def static_row(machine, started, processes, metrics, wall_s, single_wall_s, size, date=None):
    """A static run's row: bench.meshes' metrics of its mesh."""
    config = started.get("config") or {}
    return dict(common(machine, started, f"{STATIC_SCENE} (static)", processes, wall_s, single_wall_s, date),
                frames="1", cameras=str(started.get("views", "?")),
                **{"size px": f"{size}x{size}", "steps": str(config["train"]["iterations"]),
                   "chamfer % mean": fmt(metrics.get("chamfer"), 3, 100.0)})


def recorded_single_wall(machine, started, scene):
    """The wall seconds of docs/benchmarks.md's one-process row for `scene` on this machine, backend and
    preset (a run of other process counts only), or None."""
    from bench.registry import BENCHMARKS_DOC, parse_table
    try:
        with open(BENCHMARKS_DOC, encoding="utf-8") as f:
            section = f.read().split(f"## {SPEC['title']}")[1].split("\n## ")[0]
    except (OSError, IndexError):
        return None
    want = common(machine, started, scene, 1, None, None)
    for row in parse_table(section.splitlines()):
        if all(row.get(k) == want[k] for k in ("cpu", "cores", "device", "backend", "preset", "scene", "processes")):
            try:
                return float(row["wall s"])
            except (KeyError, ValueError):
                return None
    return None


def run(options):
    """Train the dynamic scene, then the static one, with each of options.processes (default 1 and 2);
    without 1 among them, speed-ups are against the one-process rows already in docs/benchmarks.md."""
    python = ensure_setup(quiet=True)
    machine = machine_info()
    counts = options.processes or [1, 2]
    folder = tempfile.mkdtemp(prefix="marble-bench-scale-")
    rows = []
    try:
        env = isolated_env(folder)
        data = dynamic_dataset(python, options, env)
        single_wall_s = None
        for processes in counts:
            name = f"scale dynamic, {processes} process{'es' if processes > 1 else ''}"
            job = os.path.join(DYNAMIC_OUT, f"job_scale_{processes}")
            run_, started = train(python, name, data, job, options, env, ["--resolution", str(options.resolution)],
                                  processes=processes)
            sequence = last_event(run_["events"], "done")["outputs"]["sequence"]
            metrics = venv_json(python, ["-m", "bench.dynamic_eval", sequence, data], env,
                                f"{name}: evaluating the sequence")
            single_wall_s = run_["wall_s"] if processes == 1 else (
                single_wall_s or recorded_single_wall(machine, started, "dynamic torus"))
            rows.append(scale_row(machine, started, processes, metrics, run_["wall_s"], single_wall_s))
        static = os.path.join(OUT, "quality", STATIC_SCENE, "data")
        if not os.path.isfile(os.path.join(static, "truth.ply")):
            log("bench", f"scale: no {os.path.relpath(static, REPO)} (`bench quality --scenes {STATIC_SCENE}` "
                         f"renders it); the static rows are left out")
            return rows
        single_wall_s = None
        for processes in counts:
            name = f"scale {STATIC_SCENE}, {processes} process{'es' if processes > 1 else ''}"
            job = os.path.join(OUT, "quality", STATIC_SCENE, f"job_scale_{processes}")
            run_, started = train(python, name, static, job, options, env, processes=processes)
            metrics = venv_json(python, ["-m", "bench.meshes", "metrics", os.path.join(job, "meshes", "mesh.ply"),
                                         os.path.join(static, "truth.ply")], env, f"{name}: metrics")
            single_wall_s = run_["wall_s"] if processes == 1 else (
                single_wall_s or recorded_single_wall(machine, started, f"{STATIC_SCENE} (static)"))
            size = options.size or 200
            rows.append(static_row(machine, started, processes, metrics, run_["wall_s"], single_wall_s, size))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows
