"""The speed benchmark: `python -m demo.speed_bench` (run by `python3 build.py bench speed`).

Runs with any Python that has torch (and numpy; PyMCubes and pillow for the training parts), without
Blender, so the same file measures a GPU machine with its own python3:

    python -m demo.speed_bench [--parts encoding,train,dtu,dynamic] [--device auto|cpu|cuda]
        [--backends tcnn,triton,torch] [--points 18,20] [--half auto|on|off|both]
        [--train-data PATH] [--train-iterations N] [--train-backends auto,...]
        [--dtu PATH] [--dtu-downscale 1] [--dynamic-data PATH] [--dynamic-frames A:B]
        [--dynamic-first-iterations N] [--backend auto] [--preset fast] [--set SECTION.FIELD=VALUE]
        [--timeout-s S] [--json OUT]

Parts (default: encoding and train; dtu and dynamic too on CUDA, where they take minutes, not hours):
- encoding: forward + backward of the `fast` preset's hash grid (engine.nn.encoding.HashGrid) per backend
  at 2^18 and 2^20 uniformly random points, and of its numerical-gradient taps (encode_taps: the point
  and its 6 central-difference neighbours), against the memory floor: the bytes its lookups must move
  (floor_bytes_per_point) over the device's copy bandwidth measured here by a large tensor copy.
- train: `python -m engine train --preset fast` on a rendered scene (default demo/out/speed/torus, the
  demo torus that build.py renders with Blender): iterations/s and samples/s over the steady part.
- dtu: DTU scan 24 from the shared data with the fast preset at its full iteration count: minutes from
  process start to the mesh written.
- dynamic: a rendered dynamic dataset (default demo/out/dynamic/data, bench dynamic's) with the fast
  preset: seconds per frame after the first (the engine's `seconds` of each `mesh` event).

--json OUT writes everything measured plus the docs/benchmarks.md rows (`rows`, the columns below),
rewritten after each part, so a run cut short still leaves what it finished; `python3 build.py bench
speed --from-json OUT` merges the rows. Module level is standard library only: build.py imports the
columns and row builders from here without torch.
"""
import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

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


def say(message):
    print(f"[speed] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# the memory floor

def floor_bytes_per_point(levels, features, table_bytes, taps=1):
    """Bytes one point's encoding forward + backward must move at least, counting every lookup.

    Per level and lookup: the 8 corners' features read in the forward (table_bytes each: 2 for a
    float16 table, 4 for float32), their float32 gradients accumulated in the backward (an atomic
    add reads and writes: 8 bytes a value), the output written and its gradient read back (4 bytes a
    feature each way); plus the point read once (3 float32). taps: lookups per point (7 for the point
    and its 6 central-difference taps)."""
    per_lookup_level = features * (8 * table_bytes + 8 * 8 + 2 * 4)
    return 12 + taps * levels * per_lookup_level


# ---------------------------------------------------------------------------------------------------
# timing

def _sync(device):
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def time_op(fn, device, warmup=None, min_reps=3, max_reps=50, budget_s=2.0):
    """Median seconds of fn() after `warmup` untimed calls (default 2 on a GPU, where the first compiles
    Triton kernels; 1 on the CPU): CUDA events on a GPU, perf_counter on the CPU; at least min_reps,
    more while within budget_s."""
    import torch
    for _ in range(warmup if warmup is not None else (2 if device == "cuda" else 1)):
        fn()
    _sync(device)
    times, until = [], time.perf_counter() + budget_s
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() < until):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return {"seconds": statistics.median(times), "min_s": min(times), "reps": len(times)}


def copy_bandwidth(device, mib=None):
    """Bytes per second a large `dst.copy_(src)` moves on `device` (read + written)."""
    import torch
    mib = mib or (1024 if device == "cuda" else 256)   # far beyond any cache
    src = torch.ones(mib * 2 ** 20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing = time_op(lambda: dst.copy_(src), device, warmup=3, min_reps=5, max_reps=30, budget_s=1.0)
    nbytes = 2 * src.numel() * src.element_size()
    return {"bytes_per_s": nbytes / timing["seconds"], "mib": mib, "reps": timing["reps"]}


# ---------------------------------------------------------------------------------------------------
# encoding

def resolve_device(name):
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but this torch has no usable CUDA device")
    return name


def encoding_backends(device, features, requested=None):
    """(backends to measure, {backend: why skipped}). Interpreted Triton (TRITON_INTERPRET=1 on the
    CPU) is for tests and far too slow to time, so it is never measured."""
    try:
        from engine.nn import backends
    except ImportError:  # an engine from before backends.py: only the torch reference exists
        order, usable = ("torch",), ["torch"]
        why = lambda name, device, features: None if name == "torch" else "no engine.nn.backends"  # noqa: E731
    else:
        order, usable, why = backends.ORDER, backends.available_backends(device, features), backends.why_unusable
    # Every known backend by default, so the result says why each one that did not run did not.
    names = list(requested) if requested else list(order)
    chosen, skipped = [], {}
    for name in names:
        if name == "triton" and device != "cuda":
            skipped[name] = "Triton runs only interpreted on the CPU (TRITON_INTERPRET=1): for tests, not timing"
        elif name not in usable:
            skipped[name] = why(name, device, features) or "not usable here"
        else:
            chosen.append(name)
    return chosen, skipped


def half_choices(mode, backend, device, setting="auto"):
    """The float16-table settings to measure for `backend`: the engine's own choice (auto), or on/off/both.
    Only Triton reads a float16 copy (tcnn keeps its own precision, torch reads float32)."""
    if backend != "triton":
        return [False]
    if mode == "both":
        return [False, True]
    if mode in ("on", "off"):
        return [mode == "on"]
    try:
        from engine.nn.backends import half_table_enabled
    except ImportError:
        return [False]
    return [half_table_enabled(setting, backend, device)]


def make_grid(cfg, backend, device, half):
    """The hash grid on `device` running `backend` with every level active."""
    from engine.nn.encoding import HashGrid
    grid = HashGrid(cfg).to(device)
    grid.set_backend(backend, half_table=half)
    grid.set_active_levels(cfg.levels)
    return grid


def _table_parameters(grid):
    return grid.table_parameters()


def table_bytes(grid):
    """Bytes of one table value as the lookups read it."""
    if grid.half_table:
        return 2
    return _table_parameters(grid)[0].element_size()


def torch_backend_bytes(lookups, levels, features):
    """Rough peak memory of the torch reference's forward + backward (measured on the CPU: about 590
    bytes per lookup and level with 2 features): corner rows (int64), weights, gathered values, their
    gradients. Used to skip sizes that would not fit (on the CPU the OOM killer would end the run)."""
    return lookups * levels * (470 + 64 * features)


def available_memory(device):
    """Bytes free on `device` now (MemAvailable on a Linux CPU; None when unknown)."""
    if device == "cuda":
        import torch
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure_encoding(grid, points, device, bandwidth=None, taps=False, budget_s=2.0, seed=0):
    """Time forward + backward (gradients for the tables only, as training with numerical gradients
    needs; set to None before each call, as the optimiser's zero_grad does) of `points` uniformly
    random points, or of encode_taps on them (7 lookups each, eps the finest cell). Returns seconds
    per call, points/s and, given the copy bandwidth (bytes/s), the memory floor's figures."""
    import torch
    generator = torch.Generator(device=device).manual_seed(seed)
    u = torch.rand(points, 3, generator=generator, device=device)
    eps = grid.cell_size(grid.cfg.levels - 1)
    params = _table_parameters(grid)
    holder = {}

    def call():
        for p in params:
            p.grad = None
        out = grid.encode_taps(u, eps) if taps else grid(u)
        if "grad" not in holder:
            holder["grad"] = torch.randn(out.shape, generator=generator, device=device, dtype=out.dtype)
        out.backward(holder["grad"])

    timing = time_op(call, device, budget_s=budget_s)
    per_point = floor_bytes_per_point(grid.cfg.levels, grid.cfg.features, table_bytes(grid), 7 if taps else 1)
    result = {
        "part": "taps" if taps else "encoding", "points": points, "log2_points": round(math.log2(points), 3),
        "lookups_per_point": 7 if taps else 1, "seconds": timing["seconds"], "min_s": timing["min_s"],
        "reps": timing["reps"], "points_per_s": points / timing["seconds"],
        "table_bytes": table_bytes(grid), "floor_bytes_per_point": per_point,
    }
    if bandwidth:
        floor_s = points * per_point / bandwidth
        result.update(copy_bytes_per_s=bandwidth, floor_s=floor_s, floor_points_per_s=points / floor_s,
                      ratio=timing["seconds"] / floor_s)
    return result


def grid_summary(cfg):
    return {"levels": cfg.levels, "features": cfg.features, "log2_table": cfg.log2_table,
            "base_resolution": cfg.base_resolution, "finest_resolution": cfg.finest_resolution}


def run_encoding(args, device, result, save):
    import torch
    from engine.config import preset
    cfg = preset("fast").encoding
    bandwidth = copy_bandwidth(device, args.copy_mib)
    result["copy"] = bandwidth
    say(f"copy bandwidth on {device}: {bandwidth['bytes_per_s'] / 1e9:.1f} GB/s ({bandwidth['mib']} MiB copied)")
    chosen, skipped = encoding_backends(device, cfg.features, args.backends)
    for name, why in skipped.items():
        say(f"encoding: {name} skipped: {why}")
        result["skipped"][f"encoding {name}"] = why
    for backend in chosen:
        for half in half_choices(args.half, backend, device, cfg.half_table):
            try:
                grid = make_grid(cfg, backend, device, half)
            except Exception as exc:  # a backend that cannot start here is reported, not fatal
                result["failed"].append(f"encoding {backend}: {type(exc).__name__}: {exc}")
                say(f"encoding: {backend} failed to start: {exc}")
                continue
            for log2 in args.points:
                for taps in (False, True):
                    what = f"{'taps' if taps else 'encoding'} {backend} {'fp16' if half else 'fp32'} 2^{log2}"
                    points, lookups = 2 ** log2, 2 ** log2 * (7 if taps else 1)
                    free = available_memory(device)
                    need = torch_backend_bytes(lookups, cfg.levels, cfg.features)
                    if backend == "torch" and free is not None and need > 0.7 * free:
                        why = (f"the torch reference needs about {need / 2 ** 30:.1f} GiB for it, "
                               f"{free / 2 ** 30:.1f} GiB are free")
                        say(f"{what}: skipped: {why}")
                        result["skipped"][what] = why
                        continue
                    try:
                        entry = measure_encoding(grid, points, device, bandwidth["bytes_per_s"], taps=taps,
                                                 budget_s=args.budget_s)
                    except Exception as exc:
                        if device == "cuda" and isinstance(exc, torch.cuda.OutOfMemoryError):
                            result["skipped"][what] = "out of GPU memory"
                            torch.cuda.empty_cache()
                            continue
                        result["failed"].append(f"{what}: {type(exc).__name__}: {exc}")
                        say(f"{what}: failed: {exc}")
                        continue
                    entry.update(backend=backend, half_table=grid.half_table,
                                 grid=grid_summary(cfg), preset="fast")
                    result["encoding"].append(entry)
                    say(f"{what}: {entry['seconds'] * 1e3:.2f} ms, {entry['points_per_s'] / 1e6:.2f} M points/s, "
                        f"{entry.get('ratio', float('nan')):.1f}x the memory floor ({entry['reps']} runs)")
                    save()
            del grid
            if device == "cuda":
                torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------
# engine runs

def run_engine(arguments, job, timeout_s=None, tag="engine"):
    """Run `python -m engine ARGUMENTS` with this Python; returns code, wall_s, timed_out and events,
    each event with `_wall` (seconds from our start to its arrival). Past timeout_s the engine is asked
    to stop (SIGTERM: it saves a checkpoint and ends with `cancelled`)."""
    os.makedirs(job, exist_ok=True)
    command = [sys.executable, "-m", "engine", *arguments]
    say(f"{tag}: python -m engine {' '.join(arguments)}")
    events, started = [], time.perf_counter()
    last_print = started
    state = {"timed_out": False}
    with open(os.path.join(job, "engine.log"), "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=log, text=True, bufsize=1)

        def stop():
            state["timed_out"] = True
            process.terminate()
            killer = threading.Timer(120.0, process.kill)  # a checkpoint takes seconds, not minutes
            killer.daemon = True
            killer.start()

        timer = threading.Timer(timeout_s, stop) if timeout_s else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            for line in process.stdout:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                now = time.perf_counter()
                event["_wall"] = now - started
                events.append(event)
                kind = event.get("event")
                if kind == "progress" and now - last_print >= 15.0:
                    last_print = now
                    say(f"{tag}: {event.get('iteration')}/{event.get('total')}"
                        + (f" frame {event.get('frame')}" if event.get("frame") is not None else "")
                        + f"  {now - started:.0f} s")
                elif kind in ("warning", "error", "mesh"):
                    say(f"{tag}: {kind} {event.get('message') or event.get('path')}")
        except BaseException:
            process.kill()
            raise
        finally:
            code = process.wait()
            if timer:
                timer.cancel()
    return {"code": code, "wall_s": time.perf_counter() - started, "timed_out": state["timed_out"],
            "events": events, "log": os.path.join(job, "engine.log")}


def _event(events, kind):
    return next((e for e in reversed(events) if e.get("event") == kind), {})


def _log_tail(path, chars=1500):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


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


def run_train(args, device, work, result, save):
    data = args.train_data
    if not data or not os.path.exists(data):
        why = (f"no rendered scene at {data or DEFAULT_TRAIN_DATA} (`python3 build.py bench speed` renders the "
               "demo torus there with Blender; pass --train-data PATH for another)")
        result["skipped"]["train"] = why
        say(f"train: skipped: {why}")
        return
    iterations = args.train_iterations or TRAIN_ITERATIONS.get(device, 20)
    for backend in args.train_backends:
        job = os.path.join(work, f"train_{backend}")
        arguments = engine_arguments(args, data, job, device, backend) + [
            "--iterations", str(iterations), "--resolution", str(TRAIN_MESH_RESOLUTION)]
        run = run_engine(arguments, job, args.timeout_s, f"train {backend}")
        started = _event(run["events"], "started")
        config = started.get("config") or {}
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
    """DTU scan 24's folder: --dtu, else $MARBLE_SHARED_DATA/dtu_scan24, shared/data in or beside the
    repository, /work/shared/data; None when absent."""
    if explicit:
        return explicit
    roots = ([os.environ["MARBLE_SHARED_DATA"]] if os.environ.get("MARBLE_SHARED_DATA") else
             [os.path.join(REPO, "shared", "data"), os.path.join(os.path.dirname(REPO), "shared", "data"),
              "/work/shared/data"])
    for root in roots:
        folder = os.path.join(root, "dtu_scan24")
        if os.path.isfile(os.path.join(folder, "cameras_sphere.npz")):
            return folder
    return None


def run_dtu(args, device, work, result, save):
    data = shared_dtu(args.dtu)
    if data is None or not os.path.exists(data):
        why = "DTU scan 24 is not here (looked for shared/data/dtu_scan24; pass --dtu PATH)"
        result["skipped"]["dtu"] = why
        say(f"dtu: skipped: {why}")
        return
    job = os.path.join(work, "dtu")
    arguments = engine_arguments(args, data, job, device, args.backend) + ["--downscale", str(args.dtu_downscale)]
    run = run_engine(arguments, job, args.timeout_s, "dtu")
    started = _event(run["events"], "started")
    mesh = _event(run["events"], "mesh")
    config = started.get("config") or {}
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
    if not data or not os.path.exists(data):
        why = (f"no rendered dynamic dataset at {data or DEFAULT_DYNAMIC_DATA} (`python3 build.py bench speed "
               "--prepare` or `bench dynamic` renders it with Blender; pass --dynamic-data PATH)")
        result["skipped"]["dynamic"] = why
        say(f"dynamic: skipped: {why}")
        return
    job = os.path.join(work, "dynamic")
    arguments = engine_arguments(args, data, job, device, args.backend)
    if args.dynamic_frames:
        arguments += ["--frames", args.dynamic_frames]
    if args.dynamic_first_iterations:
        arguments += ["--iterations", str(args.dynamic_first_iterations)]
    if args.resolution:
        arguments += ["--resolution", str(args.resolution)]
    run = run_engine(arguments, job, args.timeout_s, "dynamic")
    started = _event(run["events"], "started")
    config = started.get("config") or {}
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


# ---------------------------------------------------------------------------------------------------
# machine and rows

def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device):
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count() or 1,
            "gpu": gpu, "device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton_version, "python": platform.python_version(), "host": platform.node(),
            # on a shared machine other work slows every timing: the 1-minute load average at the start
            "load": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


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
            "preset": entry.get("preset") or "fast"}


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
        "backend": entry["backend"], "tables": _tables(entry.get("half_table")),
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
        "backend": entry.get("backend") or "?", "tables": _tables(entry.get("half_table")),
        "it/s": _num(entry.get("it_per_s")),
        "M samples/s": _num(entry["samples_per_s"] / 1e6 if entry.get("samples_per_s") else None),
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
        "backend": entry.get("backend") or "?", "tables": _tables(entry.get("half_table")),
        "it/s": _num(entry.get("it_per_s")),
        "M samples/s": _num(entry["samples_per_s"] / 1e6 if entry.get("samples_per_s") else None),
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
        "backend": entry.get("backend") or "?", "tables": _tables(entry.get("half_table")),
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


# ---------------------------------------------------------------------------------------------------
# command line

def _list(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m demo.speed_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=_list, help=f"comma-separated, of {','.join(PARTS)} "
                        "(default: encoding,train; all four on CUDA)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", metavar="OUT", help="write the result and its table rows here")
    parser.add_argument("--work", help="folder for the engine's jobs (default: a temporary one, removed)")
    parser.add_argument("--timeout-s", type=float, default=None,
                        help="stop an engine run after this many seconds (what it measured so far is kept)")
    enc = parser.add_argument_group("encoding")
    enc.add_argument("--backends", type=_list, help="encoding backends (default: every one usable here)")
    enc.add_argument("--points", type=lambda t: [int(x) for x in _list(t)], default=list(DEFAULT_POINTS),
                     help="log2 of the point counts (default 18,20)")
    enc.add_argument("--half", choices=("auto", "on", "off", "both"), default="auto",
                     help="Triton's float16 table copy: the engine's choice (auto), on, off or both")
    enc.add_argument("--budget-s", type=float, default=2.0, help="seconds of repetitions per measurement (min 3)")
    enc.add_argument("--copy-mib", type=int, help="size of the bandwidth copy (default 1024 on CUDA, 256 on CPU)")
    train = parser.add_argument_group("engine runs")
    train.add_argument("--train-data", default=DEFAULT_TRAIN_DATA, help="scene for the train part")
    train.add_argument("--train-iterations", type=int,
                       help=f"steps of the train part (default {TRAIN_ITERATIONS['cpu']} on CPU, "
                            f"{TRAIN_ITERATIONS['cuda']} on CUDA)")
    train.add_argument("--train-backends", type=_list, default=["auto"],
                       help="engine --backend of each train run (default auto)")
    train.add_argument("--backend", default="auto", help="engine --backend of the dtu and dynamic runs")
    train.add_argument("--preset", default="fast", help="engine preset of the train, dtu and dynamic runs "
                       "(default fast, the one the targets are for; cpu for a quick check of the harness)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override a preset field in every engine run (repeatable; shown in `workload`)")
    train.add_argument("--dtu", help="DTU scan 24's folder (default: found in shared/data)")
    train.add_argument("--dtu-downscale", type=int, default=1, help="train DTU on images 1/N the size (default 1)")
    train.add_argument("--dynamic-data", default=DEFAULT_DYNAMIC_DATA, help="a rendered dynamic dataset")
    train.add_argument("--dynamic-frames", metavar="A:B", help="frames of the dynamic run (default all)")
    train.add_argument("--dynamic-first-iterations", type=int,
                       help="steps of the first frame (default the preset's; later frames are what is timed)")
    train.add_argument("--resolution", type=int, help="marching cubes resolution of each dynamic frame "
                       "(default the preset's)")
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts or [] if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    parts = args.parts or (list(PARTS) if device == "cuda" else ["encoding", "train"])
    result = {"benchmark": "speed", "format": 1, "machine": machine(device), "parts": parts,
              "encoding": [], "train": [], "dtu": None, "dynamic": None, "skipped": {}, "failed": []}
    info = result["machine"]
    say(f"{info['cpu']} ({info['cores']} cores), {info['gpu'] or 'no GPU'}; device {device}; torch {info['torch']}, "
        f"triton {info['triton'] or '-'}; parts {','.join(parts)}")

    def save():
        if args.json:
            write_json(args.json, result)

    work = args.work or tempfile.mkdtemp(prefix="marble-speed-")
    try:
        for part, run in (("encoding", run_encoding), ("train", run_train), ("dtu", run_dtu),
                          ("dynamic", run_dynamic)):
            if part not in parts:
                continue
            if part == "encoding":
                run(args, device, result, save)
            else:
                run(args, device, work, result, save)
            save()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if not args.json:  # standalone: the rows on stdout, one JSON object a line
        for row in build_rows(result):
            print(json.dumps(row), flush=True)
    if result["failed"]:
        for failure in result["failed"]:
            say("failed: " + failure)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
