"""The speed benchmark: `python -m bench.speed_probe` (run by `python3 build.py bench speed`).

Runs with any Python that has torch (and numpy; PyMCubes and pillow for the training parts), without
Blender, so the same file measures a GPU machine with its own python3:

    python -m bench.speed_probe [--parts encoding,train,dtu,dynamic] [--device auto|cpu|cuda]
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
  demo torus that `build.py bench speed --prepare` renders with Blender): iterations/s and samples/s over the steady part.
- dtu: DTU scan 24 from the shared data with the fast preset at its full iteration count: minutes from
  process start to the mesh written.
- dynamic: a rendered dynamic dataset (default demo/out/dynamic/data, bench dynamic's) with the fast
  preset: seconds per frame after the first (the engine's `seconds` of each `mesh` event).

--json OUT writes everything measured plus the docs/benchmarks.md rows (`rows`, the columns below),
rewritten after each part, so a run cut short still leaves what it finished; `python3 build.py bench
speed --from-json OUT` merges the rows. It needs this checkout (the engine, bench/ and tools/, all
carried with it) and torch, numpy and triton, nothing that pip would have to install: no Blender, no
.venv. The rows are built by bench.speed_rows, the engine runs made by bench.speed_runs.
"""
import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

from bench.machine import cpu_model
from bench.speed_rows import (DEFAULT_DYNAMIC_DATA, DEFAULT_POINTS, DEFAULT_TRAIN_DATA, PARTS, TRAIN_ITERATIONS,
                              build_rows, floor_bytes_per_point, write_json)
from bench.speed_runs import run_dtu, run_dynamic, run_train, say, skip

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
        skip(result, f"encoding {name}", why)
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
                        skip(result, what, why)
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
# the machine

def machine(device):
    """bench.machine's CPU and core count, plus what torch knows of the device and the versions."""
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


# ---------------------------------------------------------------------------------------------------
# command line

def _list(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.speed_probe", description=__doc__.split("\n\n")[0])
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
