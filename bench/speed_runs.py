"""The speed probe's engine runs (standard library only; the engine itself runs in a child process
with this Python): the train, dtu and dynamic parts, and the steady training rate from the events."""
import os
import statistics
import sys

from bench.engine_run import last_event as _event
from bench.engine_run import log_tail as _log_tail
from bench.engine_run import run_engine
from bench.speed_rows import DEFAULT_DYNAMIC_DATA, DEFAULT_TRAIN_DATA, TRAIN_ITERATIONS, TRAIN_MESH_RESOLUTION
from tools.shared_data import shared_data_dir


def say(message):
    print(f"[speed] {message}", file=sys.stderr, flush=True)


def skip(result, part, why):
    """Record and say why `part` was not measured here."""
    result["skipped"][part] = why
    say(f"{part}: skipped: {why}")


def engine(arguments, job, timeout_s, tag):
    """run_engine with this Python, its log in the job folder, its progress through say()."""
    os.makedirs(job, exist_ok=True)
    say(f"{tag}: python -m engine {' '.join(arguments)}")
    return run_engine(arguments, os.path.join(job, "engine.log"), tag, timeout_s=timeout_s, say=say)


def steady_start(config, total):
    """The step the steady part starts at: once every hash level is open (progressive levels change
    the cost of a step) when the run goes on at least as long again, else after the first few steps
    (the first builds the occupancy grid and, on a GPU, compiles kernels)."""
    train, encoding = (config or {}).get("train") or {}, (config or {}).get("encoding") or {}
    try:
        all_open = max(0, encoding["levels"] - train["start_levels"]) * train["level_every"]
    except (KeyError, TypeError):
        all_open = 0
    if all_open and total >= 2 * all_open:
        return all_open
    return min(max(3, total // 5), max(0, total - 2))


def run_rate(events, config, total):
    """steady_rate of a static run of `total` steps; for one stopped early (timeout), over the steps it
    reached."""
    reached = _event(events, "progress").get("iteration") or 0
    return (steady_rate(events, steady_start(config, total))
            or steady_rate(events, steady_start(config, min(total, reached))))


def steady_rate(events, start, frame=None):
    """Iterations/s and samples/s over the training progress events (of `frame` in a dynamic job) from
    iteration `start` on: (last - first iteration) / (last - first event time); samples/s is the mean
    of the events' `samples` (samples evaluated in a step) times that rate. None without two events."""
    progress = [e for e in events if e.get("event") == "progress" and isinstance(e.get("iteration"), int)
                and e.get("phase", "train") == "train" and e.get("frame") == frame and e["iteration"] >= start]
    if len(progress) < 2 or progress[-1]["iteration"] <= progress[0]["iteration"]:
        return None
    first, last = progress[0], progress[-1]
    it_per_s = (last["iteration"] - first["iteration"]) / max(last["t"] - first["t"], 1e-9)
    samples = [e["samples"] for e in progress[1:] if isinstance(e.get("samples"), (int, float))]
    rays = [e["rays"] for e in progress[1:] if isinstance(e.get("rays"), (int, float))]
    levels = [e["levels"] for e in progress if isinstance(e.get("levels"), int)]
    return {"it_per_s": it_per_s, "first": first["iteration"], "last": last["iteration"],
            "samples_per_step": statistics.mean(samples) if samples else None,
            "samples_per_s": statistics.mean(samples) * it_per_s if samples else None,
            "rays_per_step": statistics.mean(rays) if rays else None,
            "levels": [min(levels), max(levels)] if levels else None}


def describe_rig(path):
    """views, frames, cameras and image size of a rig (engine.io.rig, numpy only); {} when unreadable."""
    try:
        from engine.io.rig import load_rig
        rig = load_rig(path)
    except Exception:
        return {}
    frames = sorted({getattr(v, "frame", 0) or 0 for v in rig.views})
    first = rig.views[0]
    return {"views": len(rig.views), "frames": len(frames), "cameras": len(rig.views) // max(1, len(frames)),
            "size": [int(first.width), int(first.height)]}


def engine_arguments(args, data, job, device, backend):
    """`train` arguments common to every engine run: the preset, the device, the backend unless auto
    (older engines have no --backend), --set overrides."""
    arguments = ["train", "--data", data, "--out", job, "--preset", args.preset, "--device", device]
    if backend != "auto":
        arguments += ["--backend", backend]
    for assignment in args.set:
        arguments += ["--set", assignment]
    return arguments


def _started_summary(started):
    config = started.get("config") or {}
    return {"device": started.get("device"), "backend": started.get("backend"),
            "half_table": started.get("half_table"), "preset": config.get("preset"),
            "iterations": (config.get("train") or {}).get("iterations"), "views": started.get("views")}


def _failure(tag, run):
    message = _event(run["events"], "error").get("message") or "no error event"
    return f"{tag}: the engine failed (exit {run['code']}): {message}\n{_log_tail(run['log'])}"


def _present(result, part, data, why):
    """True when the dataset `data` is there; else the part is skipped, saying `why`."""
    if data and os.path.exists(data):
        return True
    skip(result, part, why)
    return False


def _started(run):
    """The run's `started` event and the configuration it carries."""
    started = _event(run["events"], "started")
    return started, started.get("config") or {}


def run_train(args, device, work, result, save):
    data = args.train_data
    if not _present(result, "train", data, f"no rendered scene at {data or DEFAULT_TRAIN_DATA} (`python3 build.py "
                    "bench speed` renders the demo torus there with Blender; pass --train-data PATH for another)"):
        return
    iterations = args.train_iterations or TRAIN_ITERATIONS.get(device, 20)
    for backend in args.train_backends:
        job = os.path.join(work, f"train_{backend}")
        arguments = engine_arguments(args, data, job, device, backend) + [
            "--iterations", str(iterations), "--resolution", str(TRAIN_MESH_RESOLUTION)]
        run = engine(arguments, job, args.timeout_s, f"train {backend}")
        started, config = _started(run)
        rate = run_rate(run["events"], config, iterations)
        if rate is None:
            result["failed"].append(_failure(f"train {backend}", run))
            continue
        entry = {"data": os.path.basename(os.path.normpath(data)), "rig": describe_rig(data),
                 "requested_backend": backend, "iterations": iterations, "wall_s": run["wall_s"], "settings": args.set,
                 "timed_out": run["timed_out"], **_started_summary(started), **rate}
        result["train"].append(entry)
        if run["code"] != 0 and not run["timed_out"]:
            result["failed"].append(_failure(f"train {backend}", run))
        say(f"train {entry['backend']}: {rate['it_per_s']:.2f} it/s over steps {rate['first']}-{rate['last']}"
            + (f", {rate['samples_per_s'] / 1e6:.2f} M samples/s" if rate["samples_per_s"] else ""))
        save()


def shared_dtu(explicit=None):
    """DTU scan 24's folder: --dtu, else dtu_scan24 in the shared data (tools.shared_data); None when absent."""
    if explicit:
        return explicit
    root = shared_data_dir(os.path.join("dtu_scan24", "cameras_sphere.npz"))
    return os.path.join(root, "dtu_scan24") if root else None


def run_dtu(args, device, work, result, save):
    data = shared_dtu(args.dtu)
    if not _present(result, "dtu", data, "DTU scan 24 is not here (looked for shared/data/dtu_scan24; pass --dtu PATH)"):
        return
    job = os.path.join(work, "dtu")
    arguments = engine_arguments(args, data, job, device, args.backend) + ["--downscale", str(args.dtu_downscale)]
    run = engine(arguments, job, args.timeout_s, "dtu")
    started, config = _started(run)
    mesh = _event(run["events"], "mesh")
    total = (config.get("train") or {}).get("iterations") or 0
    rate = run_rate(run["events"], config, total) or {}
    rig = describe_rig(data)
    if rig.get("size"):
        rig["size"] = [s // args.dtu_downscale for s in rig["size"]]
    progress = _event(run["events"], "progress")
    entry = {"data": "dtu_scan24", "rig": rig, "downscale": args.dtu_downscale, "wall_s": run["wall_s"], "settings": args.set,
             "timed_out": run["timed_out"], "mesh_wall_s": mesh.get("_wall"), "mesh_t": mesh.get("t"),
             "reached": progress.get("iteration"), **_started_summary(started), **rate}
    result["dtu"] = entry
    if not mesh:
        result["failed"].append(("dtu: timed out" if run["timed_out"] else _failure("dtu", run))
                                + f" at iteration {progress.get('iteration')}/{progress.get('total')}")
    else:
        say(f"dtu: mesh after {mesh['_wall'] / 60:.2f} minutes on {started.get('device')} ({started.get('backend')})")
    save()


def run_dynamic(args, device, work, result, save):
    data = args.dynamic_data
    if not _present(result, "dynamic", data, f"no rendered dynamic dataset at {data or DEFAULT_DYNAMIC_DATA} "
                    "(`python3 build.py bench speed --prepare` or `bench dynamic` renders it with Blender; "
                    "pass --dynamic-data PATH)"):
        return
    job = os.path.join(work, "dynamic")
    arguments = engine_arguments(args, data, job, device, args.backend)
    if args.dynamic_frames:
        arguments += ["--frames", args.dynamic_frames]
    if args.dynamic_first_iterations:
        arguments += ["--iterations", str(args.dynamic_first_iterations)]
    if args.resolution:
        arguments += ["--resolution", str(args.resolution)]
    run = engine(arguments, job, args.timeout_s, "dynamic")
    started, config = _started(run)
    meshes = [e for e in run["events"] if e.get("event") == "mesh" and isinstance(e.get("seconds"), (int, float))]
    rig = describe_rig(data)
    entry = {"data": os.path.basename(os.path.normpath(data)), "rig": rig, "wall_s": run["wall_s"], "settings": args.set,
             "timed_out": run["timed_out"], "frames_done": len(meshes),
             "frames_trained": len(started.get("frames") or []) or None,
             "frame_seconds": [e["seconds"] for e in meshes],
             "first_iterations": (config.get("train") or {}).get("iterations"),
             "frame_iterations": (config.get("dynamic") or {}).get("frame_iterations"),
             "prediction_iterations": (config.get("dynamic") or {}).get("prediction_iterations"),
             "predict": (config.get("dynamic") or {}).get("predict_transform", True),
             "resolution": (config.get("mesh") or {}).get("resolution"), **_started_summary(started)}
    later = entry["frame_seconds"][1:]
    entry["seconds_per_frame"] = statistics.mean(later) if later else None
    result["dynamic"] = entry
    if not later:
        result["failed"].append("dynamic: no frame after the first finished: "
                                + ("timed out" if run["timed_out"] else _failure("dynamic", run)))
    else:
        say(f"dynamic: {entry['seconds_per_frame']:.1f} s per later frame over {len(later)} frames")
    save()

