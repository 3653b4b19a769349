"""jobs: how long Blender's interface freezes while the engine trains (`python3 build.py bench jobs`).

The measurement, `python -m bench.jobs [--iterations 300] [--preview-every 25]`, runs in the .venv:
it renders a small torus dataset, installs the extension into a sandboxed Blender (the bpy module),
imports the rig and trains it through marble.train with the real engine and live previews, calling
the add-on's tick as Blender's timer would. Every tick is timed: a tick runs on Blender's main
thread, so its duration is how long the interface freezes. Prints one line `RESULT {json}`.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time

from bench.harness import OUT, fmt, sandboxed_result, today
from bench.machine import machine_info
from tools.env import ensure_setup

SPEC = {
    "title": "jobs: how long Blender's interface freezes while the engine trains",
    "columns": ["date", "cpu", "cores", "blender", "iterations", "preview every", "train returns ms",
                "first progress s", "job s", "ticks", "tick median ms", "tick p99 ms", "tick max ms",
                "previews", "preview tick max ms", "final import ms", "mesh vertices"],
    "key": ["cpu", "cores", "blender", "iterations", "preview every"],
}
WORK = os.path.join(OUT, "jobs_bench")


def run(options):
    python = ensure_setup()
    arguments = [python, "-m", "bench.jobs"]
    if options.iterations:
        arguments += ["--iterations", str(options.iterations)]
    result = sandboxed_result("jobs", lambda folder: arguments)
    machine = machine_info()
    return {
        "date": today(), "cpu": machine["cpu"], "cores": str(machine["cores"]),
        "blender": result["blender"], "iterations": str(result["iterations"]),
        "preview every": str(result["preview_every"]), "train returns ms": fmt(result["train_returns_ms"], 1),
        "first progress s": fmt(result["first_progress_s"], 2), "job s": fmt(result["job_s"], 1),
        "ticks": str(result["ticks"]), "tick median ms": fmt(result["tick_median_ms"], 2),
        "tick p99 ms": fmt(result["tick_p99_ms"], 1), "tick max ms": fmt(result["tick_max_ms"], 1),
        "previews": str(result["previews"]), "preview tick max ms": fmt(result["preview_tick_max_ms"], 1),
        "final import ms": fmt(result["final_import_ms"], 1), "mesh vertices": str(result["mesh_vertices"]),
    }


# ---------------------------------------------------------------------------------------------------
# in the .venv, with bpy

def measure(args):
    import bpy
    from demo import scene as demo_scene
    from demo.run import install

    dataset = demo_scene.render_dataset(os.path.join(WORK, "data"), views=args.views, size=(args.size, args.size),
                                        samples=4)
    package, jobs = install(bpy)
    bpy.ops.wm.read_homefile(use_empty=True)
    if bpy.ops.marble.import_rig(filepath=dataset["transforms"]) != {"FINISHED"}:
        raise RuntimeError("marble.import_rig failed")
    prefs = bpy.context.preferences.addons[package].preferences
    prefs.preview_every = args.preview_every
    settings = bpy.context.scene.marble
    settings.preset, settings.iterations, settings.resolution = "cpu", args.iterations, 128
    job_dir = os.path.join(WORK, "job")
    shutil.rmtree(job_dir, ignore_errors=True)
    settings.job_dir = job_dir
    state = bpy.context.window_manager.marble_job

    started = time.perf_counter()
    if bpy.ops.marble.train() != {"FINISHED"}:
        raise RuntimeError(f"marble.train failed: {state.message}")
    returned = time.perf_counter() - started
    ticks, preview_ticks, first_progress, import_tick = [], [], None, None
    while True:
        previews_before = _preview_mesh(bpy)
        mark = time.perf_counter()
        delay = jobs.tick()
        spent = time.perf_counter() - mark
        ticks.append(spent)
        if _preview_mesh(bpy) not in (None, previews_before):
            preview_ticks.append(spent)
        if first_progress is None and state.iteration > 0:
            first_progress = time.perf_counter() - started
        if import_tick is None and state.state == "done":
            import_tick = spent  # the tick that handled `done` and built the final mesh
        if delay is None:
            break
        time.sleep(min(delay, 0.05))
    total = time.perf_counter() - started
    if state.state != "done":
        raise RuntimeError(f"the job ended '{state.state}': {state.message}")
    return {
        "blender": bpy.app.version_string, "iterations": args.iterations, "preview_every": args.preview_every,
        "train_returns_ms": returned * 1000, "first_progress_s": first_progress, "job_s": total,
        "ticks": len(ticks), "tick_median_ms": statistics.median(ticks) * 1000,
        "tick_p99_ms": sorted(ticks)[int(0.99 * (len(ticks) - 1))] * 1000, "tick_max_ms": max(ticks) * 1000,
        "previews": len(preview_ticks), "preview_tick_max_ms": max(preview_ticks, default=0.0) * 1000,
        "final_import_ms": (import_tick or 0.0) * 1000, "mesh_vertices": len(bpy.data.objects[_mesh_name(bpy)].data.vertices),
    }


def _preview_mesh(bpy):
    """The preview object's current mesh datablock (its pointer), or None."""
    obj = next((o for o in bpy.data.objects if o.name.endswith(" preview")), None)
    return obj.data.as_pointer() if obj is not None and obj.data is not None else None


def _mesh_name(bpy):
    return next(o.name for o in bpy.data.objects if o.type == 'MESH' and o.name.endswith(" mesh"))


def main(argv=None):
    from demo.run import say
    from tools.sandbox import enter_sandbox

    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__.split("\n\n")[1])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--preview-every", type=int, default=25)
    parser.add_argument("--views", type=int, default=24)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args(argv)
    sandbox = enter_sandbox("marble-jobs-bench-")  # before bpy is imported
    try:
        result = measure(args)
    finally:
        if sandbox:
            shutil.rmtree(sandbox, ignore_errors=True)
    say(f"ticks: median {result['tick_median_ms']:.2f} ms, max {result['tick_max_ms']:.1f} ms; "
        f"{result['previews']} previews, the slowest tick with one {result['preview_tick_max_ms']:.1f} ms")
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
