#!/usr/bin/env python3
"""Marble's one entry point (standard library only).

    python3 build.py setup [--force]    create .venv (Python 3.11) with the pinned packages
    python3 build.py test [PYTEST ARGS]  set up if needed, then run the test suite in a sandbox
    python3 build.py demo [DEMO ARGS]    set up if needed, then reconstruct the embedded default scene
    python3 build.py extension [--dist DIR]  build dist/marble-<version>.zip with Blender's build command
    python3 build.py bench [NAMES] [--iterations N]  run benchmarks, print a table, update docs/benchmarks.md
        bench quality [--scenes armadillo,spot,bunny,dtu,fox] [--preset cpu] [--views 64] [--size 200] [--set K=V]
        bench jobs: train through the add-on with live previews, time every tick of the job client
        bench speed [--parts encoding,train,dtu,dynamic] [--prepare] [--from-json FILE]: encoding against its
            memory floor, training rate, DTU to a mesh, a dynamic frame (python -m demo.speed_bench, GPU-ready)

Importable from tests (`sys.path.insert(0, REPO); import build`): build_extension(dist_dir),
venv_python(), ensure_setup(), isolated_env(folder).
"""
import argparse
import datetime
import glob
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

REPO = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(REPO, ".venv")
PYTHON_VERSION = (3, 11)  # the bpy wheel is built for exactly this Python

# The pinned packages: the one place their versions live. torch: on a machine without an NVIDIA GPU
# pip picks the CPU build of this version where one is offered (a local wheel, or the index named by
# $MARBLE_TORCH_INDEX, e.g. https://download.pytorch.org/whl/cpu); with a GPU, the default index's.
PINS = {
    "torch": "2.13.0",
    "bpy": "5.0.1",
    "numpy": "1.26.4",      # bpy 5.0 needs numpy < 2
    "trimesh": "4.8.3",
    "PyMCubes": "0.1.6",
    "pillow": "12.0.0",
    "pytest": "9.2.0",
    "scipy": "1.15.3",      # k-d tree for exact point-to-surface distances (engine.metrics)
    "triton": "3.7.1",      # the GPU kernels' compiler (the version torch 2.13's CUDA build pins); on the CPU
                            # its interpreter runs the kernels for the tests (TRITON_INTERPRET=1)
}
# Pins installed only where the package has wheels (Triton: Linux).
PLATFORM_PINS = {"triton": ("linux",)}
IMPORT_NAMES = {"PyMCubes": "mcubes", "pillow": "PIL"}
TORCH_INDEX_ENV = "MARBLE_TORCH_INDEX"
STAMP_FILE = "marble-setup.json"

# What goes into the extension zip (the add-on and the engine; no tests, no build tooling).
EXTENSION_SOURCES = ("blender_manifest.toml", "__init__.py", "addon", "operators", "ui", "engine")
BUILD_INFO_FILE = "marble_build.json"

# Environment variables pointed into a temporary folder for tests and the demo, so neither writes
# into the user's real Blender configuration or caches.
SANDBOX_DIRS = {"HOME": "home", "XDG_CACHE_HOME": "cache", "XDG_CONFIG_HOME": "config",
                "XDG_DATA_HOME": "data", "BLENDER_USER_RESOURCES": "blender",
                "TORCHINDUCTOR_CACHE_DIR": "inductor"}


class BuildError(RuntimeError):
    """A failure with a message a user can act on (printed without a traceback)."""


def log(tag, message):
    print(f"[{tag}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------
# setup

def venv_python():
    """Path of the .venv interpreter (not resolved: the venv's own python, not its base)."""
    if os.name == "nt":
        return os.path.join(VENV, "Scripts", "python.exe")
    return os.path.join(VENV, "bin", "python")


def has_nvidia_gpu():
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and "GPU" in result.stdout


def _python_version(python):
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_base_python():
    """A Python 3.11 to create the venv with: the running one if it is 3.11, else python3.11 on PATH."""
    wanted = "%d.%d" % PYTHON_VERSION
    if sys.version_info[:2] == PYTHON_VERSION:
        return sys.executable
    for name in (f"python{wanted}", "python3", "python"):
        found = shutil.which(name)
        if found and (_python_version(found) or "").startswith(wanted + "."):
            return found
    raise BuildError(f"Marble needs Python {wanted} (the bpy {PINS['bpy']} wheel is built for it), "
                     f"but this is Python {platform.python_version()} and no python{wanted} is on PATH. "
                     f"Install Python {wanted} (e.g. `apt install python{wanted} python{wanted}-venv`, "
                     f"pyenv or uv) and run `python{wanted} build.py setup`.")


def platform_pins():
    """PINS less the packages this platform has no wheels for."""
    return {name: version for name, version in PINS.items()
            if name not in PLATFORM_PINS or sys.platform.startswith(PLATFORM_PINS[name])}


def requirements():
    return [f"{name}=={version}" for name, version in platform_pins().items()]


def _variant():
    return "cuda" if has_nvidia_gpu() else "cpu"


def _stamp(python_version, variant):
    payload = json.dumps({"pins": PINS, "python": python_version, "variant": variant}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


_CHECK_SNIPPET = r"""
import importlib, importlib.metadata as md, json, sys
pins, names = json.loads(sys.argv[1]), json.loads(sys.argv[2])
problems = []
for dist, wanted in pins.items():
    try:
        have = md.version(dist)
    except md.PackageNotFoundError:
        problems.append(f"{dist} is not installed")
        continue
    if have.split("+")[0] != wanted:
        problems.append(f"{dist} {have} is installed, {wanted} is pinned")
        continue
    try:
        importlib.import_module(names.get(dist, dist))
    except Exception as exc:
        problems.append(f"{dist} does not import: {type(exc).__name__}: {exc}")
print(json.dumps(problems))
"""


def check_packages(python=None):
    """Problems with the venv's packages (missing, wrong version, import fails); [] when all is well."""
    python = python or venv_python()
    with tempfile.TemporaryDirectory(prefix="marble-check-") as tmp:
        result = subprocess.run([python, "-c", _CHECK_SNIPPET, json.dumps(platform_pins()), json.dumps(IMPORT_NAMES)],
                                capture_output=True, text=True, env=isolated_env(tmp), cwd=tmp)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [f"the package check failed: {result.stderr.strip()[-2000:]}"]


def ensure_setup(force=False, quiet=False):
    """Create .venv and install the pinned packages unless its stamp says that is already done.

    Returns the venv interpreter's path. A second run only checks the stamp and that the packages
    import (a few seconds).
    """
    say = (lambda message: None) if quiet else (lambda message: log("setup", message))
    python = venv_python()
    wanted = "%d.%d" % PYTHON_VERSION
    created = False
    if os.path.exists(python):
        version = _python_version(python)
        if not (version or "").startswith(wanted + "."):
            base = find_base_python()
            say(f"{VENV} runs Python {version or '(broken)'}, not {wanted}: recreating it with {base}")
            _run([base, "-m", "venv", "--clear", VENV])
            created = True
    else:
        base = find_base_python()
        say(f"creating {VENV} with {base} (Python {_python_version(base)})")
        _run([base, "-m", "venv", VENV])
        created = True
    version = _python_version(python)
    variant = _variant()
    stamp = _stamp(version, variant)
    stamp_path = os.path.join(VENV, STAMP_FILE)
    if not force and not created:
        try:
            with open(stamp_path, encoding="utf-8") as f:
                recorded = json.load(f).get("stamp")
        except (OSError, ValueError):
            recorded = None
        if recorded == stamp:
            problems = check_packages(python)
            if not problems:
                say(f"up to date: Python {version}, {variant} build, "
                    + ", ".join(f"{k} {v}" for k, v in PINS.items()))
                return python
            say("stamp matches but: " + "; ".join(problems))
    pip = [python, "-m", "pip", "install", *requirements()]
    if variant == "cpu" and os.environ.get(TORCH_INDEX_ENV):
        pip += ["--extra-index-url", os.environ[TORCH_INDEX_ENV]]
    say(f"installing the pinned packages ({variant} build of torch): " + " ".join(requirements()))
    started = time.time()
    _run(pip)
    problems = check_packages(python)
    if problems:
        raise BuildError("after pip install the venv is still not usable:\n  " + "\n  ".join(problems))
    if variant == "cuda":
        probe = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True)
        if probe.stdout.strip() != "True":
            say("warning: an NVIDIA GPU is present but this torch build cannot use it "
                "(a CPU wheel may have been preferred); the engine will run on the CPU")
    with open(stamp_path, "w", encoding="utf-8") as f:
        json.dump({"stamp": stamp, "python": version, "variant": variant, "pins": PINS,
                   "installed": datetime.datetime.now().isoformat(timespec="seconds")}, f, indent=2)
    say(f"done in {time.time() - started:.0f} s: {python}")
    return python


def _run(command, **kwargs):
    result = subprocess.run(command, **kwargs)
    if result.returncode != 0:
        raise BuildError(f"command failed with exit code {result.returncode}: {' '.join(command)}")
    return result


# ---------------------------------------------------------------------------------------------------
# sandbox for tests and the demo

def isolated_env(folder, base=None):
    """A copy of the environment with HOME, XDG_*, BLENDER_USER_RESOURCES and TORCHINDUCTOR_CACHE_DIR
    pointing into `folder` (created), so Blender and torch write nothing into the user's own folders."""
    env = dict(os.environ if base is None else base)
    for name, sub in SANDBOX_DIRS.items():
        path = os.path.join(folder, sub)
        os.makedirs(path, exist_ok=True)
        env[name] = path
    # Compiled bytecode would land beside the sources (and inside the installed extension's folder).
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _sandboxed(tag, command):
    """Run `command` in the repo root with a fresh sandbox folder; return its exit code."""
    folder = tempfile.mkdtemp(prefix=f"marble-{tag}-")
    try:
        env = isolated_env(folder)
        return subprocess.call([c.replace("{sandbox}", folder) for c in command], cwd=REPO, env=env)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# extension

def read_manifest(path):
    """(id, version) from a blender_manifest.toml."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        import tomllib
        data = tomllib.loads(raw.decode("utf-8"))
    except ImportError:
        text = raw.decode("utf-8")
        data = dict(re.findall(r'^\s*(id|version)\s*=\s*"([^"]*)"', text, flags=re.M))
    except ValueError as exc:
        raise BuildError(f"{path}: not valid TOML: {exc}") from None
    if not data.get("id") or not data.get("version"):
        raise BuildError(f"{path}: needs 'id' and 'version'")
    return data["id"], data["version"]


def blender_ext_cli(python=None):
    """Path of Blender's extension command line (blender_ext.py) inside the venv's bpy package."""
    pattern = os.path.join(VENV, "lib*", "python*", "site-packages", "bpy", "*", "scripts",
                           "addons_core", "bl_pkg", "cli", "blender_ext.py")
    found = sorted(glob.glob(pattern)) or sorted(glob.glob(os.path.join(
        VENV, "Lib", "site-packages", "bpy", "*", "scripts", "addons_core", "bl_pkg", "cli", "blender_ext.py")))
    return found[-1] if found else None


def build_extension(dist_dir=None, source_root=REPO):
    """Stage the extension, validate and build it with Blender's own tool; return the zip's path.

    Stages blender_manifest.toml, __init__.py, addon/, operators/, ui/ and engine/ (without
    __pycache__ and *.pyc) plus marble_build.json ({"python": the .venv interpreter, "version": the
    manifest's}) into a temporary folder, runs `blender_ext.py validate` and `build` with the venv's
    Python and checks that the engine is inside the zip.
    """
    dist_dir = os.path.abspath(dist_dir or os.path.join(REPO, "dist"))
    manifest = os.path.join(source_root, "blender_manifest.toml")
    if not os.path.isfile(manifest):
        raise BuildError(f"{manifest} is missing")
    ext_id, version = read_manifest(manifest)
    if blender_ext_cli() is None:
        ensure_setup()
    cli, python = blender_ext_cli(), venv_python()
    if cli is None:
        raise BuildError(f"Blender's blender_ext.py was not found in {VENV} (is bpy {PINS['bpy']} installed?)")
    missing = [name for name in EXTENSION_SOURCES if not os.path.exists(os.path.join(source_root, name))]
    if missing:
        raise BuildError(f"cannot build the extension: {', '.join(missing)} missing in {source_root}")
    os.makedirs(dist_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="marble-extension-")
    try:
        stage = os.path.join(tmp, ext_id)
        os.makedirs(stage)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*")
        for name in EXTENSION_SOURCES:
            source = os.path.join(source_root, name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(stage, name), ignore=ignore)
            else:
                shutil.copy2(source, os.path.join(stage, name))
        info = {"python": os.path.abspath(python), "version": version, "repo": os.path.abspath(source_root)}
        with open(os.path.join(stage, BUILD_INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
        for command in (["validate", stage], ["build", "--source-dir", stage, "--output-dir", dist_dir]):
            result = subprocess.run([python, cli, *command], capture_output=True, text=True, cwd=tmp)
            if result.returncode != 0:
                raise BuildError(f"blender_ext.py {command[0]} failed (exit {result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}".rstrip())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path = os.path.join(dist_dir, f"{ext_id}-{version}.zip")
    if not os.path.isfile(path):
        raise BuildError(f"Blender's build command did not write {path}")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    for needed in ("blender_manifest.toml", "__init__.py", "engine/io/protocol.py", BUILD_INFO_FILE):
        if needed not in names:
            raise BuildError(f"{path} lacks {needed}")
    return path


# ---------------------------------------------------------------------------------------------------
# benchmarks: each is a function(options) -> dict of column values; the table's rows are keyed by
# the benchmark's key columns (a new run on the same machine/device/backend replaces its row).

def machine_info():
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    gpu = None
    if has_nvidia_gpu():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            gpu = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            gpu = None
    return {"cpu": model, "cores": os.cpu_count() or 1, "gpu": gpu}


def bench_demo(options):
    """The embedded default end to end through the add-on (`python3 build.py demo`)."""
    python = ensure_setup()
    command = [python, "-m", "demo.run"]
    if options.iterations:
        command += ["--iterations", str(options.iterations)]
    folder = tempfile.mkdtemp(prefix="marble-bench-")
    result_file = os.path.join(REPO, "demo", "out", "result.json")
    if os.path.exists(result_file):
        os.remove(result_file)
    started = time.perf_counter()
    try:
        process = subprocess.Popen(command, cwd=REPO, env=isolated_env(folder), stdout=subprocess.PIPE,
                                   text=True, bufsize=1)
        last = ""
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.strip():
                last = line.strip()
        code = process.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    wall = time.perf_counter() - started
    match = re.fullmatch(r"chamfer: ([0-9.eE+-]+)", last)
    if code != 0 or not match:
        raise BuildError(f"the demo failed (exit {code}); last line: {last!r}")
    details = {}
    try:
        with open(result_file, encoding="utf-8") as f:
            details = json.load(f)
    except (OSError, ValueError):
        pass
    timings = details.get("timings", {})
    machine = machine_info()
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": machine["cpu"], "cores": str(machine["cores"]), "gpu": machine["gpu"] or "-",
        "device": details.get("device", "?"), "backend": details.get("backend", "?"),
        "preset": details.get("preset", "cpu"), "iterations": str(details.get("iterations", "?")),
        "views": str(details.get("views", "?")),
        "train s": f"{timings['train']:.1f}" if "train" in timings else "?",
        "wall s": f"{wall:.1f}",
        "chamfer": f"{float(match.group(1)):.4f}",
    }


_RIGS_SNIPPET = r"""
import json, math, os, statistics, sys, time
repo, folder, count, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, repo)
import struct, zlib
import numpy as np
from engine.io.rig import Rig, View, load_rig, write_colmap_text, write_transforms

def png(path, size=8):
    rows = np.full((size, 1 + 3 * size), 128, dtype=np.uint8)
    rows[:, 0] = 0
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b""))

# 2,000 cameras on a sphere (golden spiral) looking at the origin, 8x8 photographs, one K per camera.
dataset = os.path.join(folder, "rig2000")
os.makedirs(os.path.join(dataset, "images"))
views = []
for i in range(count):
    z = 1.0 - 2.0 * (i + 0.5) / count
    a = i * math.pi * (3.0 - math.sqrt(5.0))
    eye = 4.0 * np.array([math.sqrt(1 - z * z) * math.cos(a), math.sqrt(1 - z * z) * math.sin(a), z])
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 0.0, 1.0] if abs(z) < 0.99 else [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(forward, right), forward, eye
    K = np.array([[9.0 + 0.001 * i, 0.0, 4.1], [0.0, 9.0 + 0.001 * i, 3.9], [0.0, 0.0, 1.0]])
    image = os.path.join(dataset, "images", f"view_{i:05d}.png")
    png(image)
    views.append(View(image_path=image, width=8, height=8, K=K, c2w=c2w))
rig = Rig(name="rig2000", path=dataset, views=views)
transforms = os.path.join(dataset, "transforms.json")
write_transforms(rig, transforms)
write_colmap_text(rig, os.path.join(dataset, "sparse", "0"))
sources = {"transforms": transforms, "colmap": os.path.join(dataset, "sparse", "0", "cameras.txt")}

import build
import bpy
zip_path = build.build_extension(os.path.join(folder, "dist"))
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
result = {"cameras": count, "blender": bpy.app.version_string}
for name, path in sources.items():
    reads = []
    for _ in range(repeats):
        started = time.perf_counter()
        assert len(load_rig(path).views) == count
        reads.append(time.perf_counter() - started)
    result[f"read {name}"] = statistics.median(reads)
    for background in (False, True):
        times = []
        for _ in range(repeats):
            bpy.ops.wm.read_homefile(use_empty=True)
            started = time.perf_counter()
            assert bpy.ops.marble.import_rig(filepath=path, background_images=background) == {"FINISHED"}
            times.append(time.perf_counter() - started)
            cameras = [o for o in bpy.context.scene.objects if o.type == "CAMERA"]
            assert len(cameras) == count, len(cameras)
            assert len(bpy.data.images) == (count if background else 0)
        result[f"{name} bg={background}"] = statistics.median(times)
print("RESULT " + json.dumps(result), flush=True)
"""


def _sandboxed_result(name, command, cwd=None):
    """Run command(folder) in a sandbox folder (its HOME, caches and Blender user folder) and return
    the JSON of its last `RESULT {...}` line; BuildError with the output's tail when it fails."""
    folder = tempfile.mkdtemp(prefix=f"marble-bench-{name}-")
    try:
        process = subprocess.run(command(folder), cwd=cwd or folder, env=isolated_env(folder),
                                 capture_output=True, text=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise BuildError(f"the {name} benchmark failed (exit {process.returncode}):\n"
                         f"{(process.stdout + process.stderr)[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def bench_rigs(options):
    """Import a 2,000-camera rig (transforms.json and COLMAP text) with marble.import_rig in Blender."""
    python = ensure_setup()
    result = _sandboxed_result("rigs", lambda folder: [python, "-c", _RIGS_SNIPPET, REPO, folder, "2000", "3"])
    machine = machine_info()
    seconds = lambda key: f"{result[key]:.2f}"
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": machine["cpu"], "cores": str(machine["cores"]), "blender": result["blender"],
        "cameras": str(result["cameras"]),
        "transforms s": seconds("transforms bg=False"), "transforms + images s": seconds("transforms bg=True"),
        "colmap s": seconds("colmap bg=False"), "colmap + images s": seconds("colmap bg=True"),
        "read transforms s": seconds("read transforms"), "read colmap s": seconds("read colmap"),
    }


def bench_jobs(options):
    """Train through the add-on with live previews and time every tick of the job client."""
    python = ensure_setup()
    arguments = [python, "-m", "demo.jobs_bench"]
    if options.iterations:
        arguments += ["--iterations", str(options.iterations)]
    result = _sandboxed_result("jobs", lambda folder: arguments, cwd=REPO)
    machine = machine_info()
    return {
        "date": datetime.date.today().isoformat(), "cpu": machine["cpu"], "cores": str(machine["cores"]),
        "blender": result["blender"], "iterations": str(result["iterations"]),
        "preview every": str(result["preview_every"]), "train returns ms": _fmt(result["train_returns_ms"], 1),
        "first progress s": _fmt(result["first_progress_s"], 2), "job s": _fmt(result["job_s"], 1),
        "ticks": str(result["ticks"]), "tick median ms": _fmt(result["tick_median_ms"], 2),
        "tick p99 ms": _fmt(result["tick_p99_ms"], 1), "tick max ms": _fmt(result["tick_max_ms"], 1),
        "previews": str(result["previews"]), "preview tick max ms": _fmt(result["preview_tick_max_ms"], 1),
        "final import ms": _fmt(result["final_import_ms"], 1), "mesh vertices": str(result["mesh_vertices"]),
    }


# ---------------------------------------------------------------------------------------------------
# quality: reconstruct synthetic renders of the shared meshes and DTU scan 24, measure against truth

SHARED_DATA_ENV = "MARBLE_SHARED_DATA"
QUALITY_SCENES = ("armadillo", "spot", "bunny", "dtu", "fox")
QUALITY_OUT = os.path.join(REPO, "demo", "out", "quality")
QUALITY_IMAGES = os.path.join(REPO, "docs", "images")
# Real captures: trained downscaled with every 8th view held out; the held-out views are rendered at
# 1/8 size (CPU rendering is slow). The fox has no masks: the engine adds its background model.
CAPTURES = {
    "dtu": {"folder": "dtu_scan24", "rig_file": "cameras_sphere.npz", "downscale": 4, "holdout_every": 8,
            "eval_downscale": 8},
    "fox": {"folder": "fox", "rig_file": "transforms.json", "downscale": 4, "holdout_every": 8,
            "eval_downscale": 8},
}


def shared_data_candidates():
    """Where the shared reference data may be: $MARBLE_SHARED_DATA alone when set, else ../shared/data
    beside the repository, else /work/shared/data (as tests/test_rig_real.py looks)."""
    if os.environ.get(SHARED_DATA_ENV):
        return [os.path.abspath(os.environ[SHARED_DATA_ENV])]
    return [os.path.join(os.path.dirname(REPO), "shared", "data"), "/work/shared/data"]


def shared_data_dir():
    """The shared reference data folder (meshes/, dtu_scan24/, ...), or None when it is absent."""
    return next((path for path in shared_data_candidates() if os.path.isdir(path)), None)


def image_size(path):
    """(width, height) from a PNG or JPEG file's header (standard library only)."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) >= 24 and head[:8] == b"\x89PNG\r\n\x1a\n":
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            while True:  # walk the JPEG segments up to a start-of-frame marker
                marker = f.read(4)
                if len(marker) < 4 or marker[0] != 0xFF:
                    break
                length = int.from_bytes(marker[2:4], "big")
                if marker[1] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    frame = f.read(5)
                    return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
                f.seek(length - 2, os.SEEK_CUR)
    raise BuildError(f"{path}: not a PNG or JPEG file, or its header is damaged")


def _fmt(value, digits, scale=1.0):
    return "" if value is None else f"{float(value) * scale:.{digits}f}"


def quality_row(scene, machine, started, wall_s, peak_mb, views, size, metrics=None, evaluation=None,
                png=None, date=None, settings=()):
    """One row of the quality table (all cells strings; blank where a metric does not apply).

    started: the engine's `started` event (device, backend, config); metrics: demo.meshes'
    {"chamfer": fraction of the diagonal, "f_05", "f_1"} (synthetic scenes); evaluation: the engine's
    eval.json {"psnr", "mask_iou"} (held-out views); png: the mesh picture's path relative to docs/;
    settings: the `--set` overrides the engine ran with.
    """
    config = started.get("config") or {}
    device = started.get("device") or "?"
    if device.startswith("cuda") and machine.get("gpu"):
        device = f"{device}: {machine['gpu']}"
    metrics, evaluation = metrics or {}, evaluation or {}
    return {
        "date": date or datetime.date.today().isoformat(), "scene": scene,
        "cpu": machine["cpu"], "cores": str(machine["cores"]), "device": device,
        "backend": started.get("backend") or "?", "preset": config.get("preset", "?"),
        "iterations": str((config.get("train") or {}).get("iterations", "?")),
        "settings": " ".join(settings), "views": str(views),
        "size px": size if isinstance(size, str) else f"{size[0]}x{size[1]}",
        "wall s": _fmt(wall_s, 1), "peak MB": _fmt(peak_mb, 0),
        "chamfer %": _fmt(metrics.get("chamfer"), 3, 100.0),
        "F@0.5%": _fmt(metrics.get("f_05"), 3), "F@1%": _fmt(metrics.get("f_1"), 3),
        "held-out PSNR": _fmt(evaluation.get("psnr"), 2), "mask IoU": _fmt(evaluation.get("mask_iou"), 3),
        "mesh": f"[png]({png})" if png else "",
    }


def run_engine(python, arguments, log_path, tag, env=None):
    """Run `python -m engine ARGUMENTS` (stdin from /dev/null: a pipe that closes would cancel it),
    print its progress now and then; return dict(code, wall_s, peak_mb, events).

    peak_mb is the engine process's peak resident memory (ru_maxrss of os.wait4 on that child, which
    counts its own reaped children too), in MiB."""
    command = [python, "-m", "engine", *arguments]
    events = []
    started = time.perf_counter()
    last_print = started
    with open(log_path, "w", encoding="utf-8") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
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
                events.append(event)
                kind, now = event.get("event"), time.perf_counter()
                if kind == "progress" and now - last_print >= 15.0:
                    last_print = now
                    psnr = event.get("psnr")
                    log("bench", f"{tag}: {event.get('iteration')}/{event.get('total')}"
                        + (f"  psnr {psnr:.1f}" if isinstance(psnr, (int, float)) else "")
                        + f"  {now - started:.0f} s")
                elif kind in ("stage", "warning", "error"):
                    log("bench", f"{tag}: {kind} {event.get('name') or event.get('message')}")
        except BaseException:
            process.terminate()
            raise
        finally:
            process.stdout.close()
            if os.name == "posix":
                _, status, usage = os.wait4(process.pid, 0)
                process.returncode = os.waitstatus_to_exitcode(status)
                peak_mb = usage.ru_maxrss / 1024.0  # KiB on Linux
            else:
                process.wait()
                peak_mb = None
    return {"code": process.returncode, "wall_s": time.perf_counter() - started, "peak_mb": peak_mb,
            "events": events}


def _venv_json(python, arguments, env, what):
    """Run `python ARGUMENTS` (a .venv helper printing one JSON line last) and return that JSON."""
    result = subprocess.run([python, *arguments], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise BuildError(f"{what} failed (exit {result.returncode}):\n"
                         f"{(result.stdout + result.stderr)[-3000:]}".rstrip())
    return json.loads(lines[-1])


def _event(events, kind):
    return next((e for e in reversed(events) if e.get("event") == kind), {})


def _train(python, scene, data, job, options, env, extra=()):
    if os.path.isdir(job):
        shutil.rmtree(job)
    os.makedirs(job)
    arguments = ["train", "--data", data, "--out", job, "--preset", options.preset, *extra]
    for assignment in getattr(options, "set", None) or []:
        arguments += ["--set", assignment]
    if options.iterations:
        arguments += ["--iterations", str(options.iterations)]
    log("bench", f"{scene}: python -m engine {shlex.join(arguments)}")
    run = run_engine(python, arguments, os.path.join(job, "engine.log"), scene, env)
    started = _event(run["events"], "started")
    if run["code"] != 0 or not _event(run["events"], "done"):
        message = _event(run["events"], "error").get("message") or "no error event"
        raise BuildError(f"{scene}: training failed (exit {run['code']}): {message}; "
                         f"see {os.path.join(job, 'engine.log')}")
    peak = "" if run["peak_mb"] is None else f", peak {run['peak_mb']:.0f} MB"
    log("bench", f"{scene}: trained in {run['wall_s']:.1f} s on {started.get('device')} "
        f"({started.get('backend')}){peak}")
    return run, started


def _dataset_matches(folder, views, size, samples, source):
    try:
        with open(os.path.join(folder, "scene.json"), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    return (info.get("views") == views and info.get("size") == [size, size]
            and info.get("samples") == samples and info.get("source") == source
            and os.path.isfile(os.path.join(folder, "transforms.json"))
            and os.path.isfile(os.path.join(folder, "truth.ply")))


def _quality_synthetic(python, scene, data_dir, options, env, machine, image_dir):
    from_file = {"armadillo": "armadillo.obj", "spot": "spot.obj", "bunny": "stanford-bunny.obj"}[scene]
    source = os.path.join(data_dir, "meshes", from_file)
    if not os.path.isfile(source):
        raise BuildError(f"{scene}: {source} is missing")
    folder = os.path.join(QUALITY_OUT, scene)
    dataset = os.path.join(folder, "data")
    if _dataset_matches(dataset, options.views, options.size, options.samples, source):
        log("bench", f"{scene}: reusing the rendered dataset {os.path.relpath(dataset, REPO)}")
    else:
        log("bench", f"{scene}: rendering {options.views} views at {options.size}x{options.size} px "
            f"(Cycles, {options.samples} samples) into {os.path.relpath(dataset, REPO)}")
        rendered = _venv_json(python, ["-m", "demo.meshes", "render", scene, dataset, "--views",
                                       str(options.views), "--size", str(options.size), "--samples",
                                       str(options.samples)], env, f"{scene}: rendering")
        log("bench", f"{scene}: rendered in {rendered['seconds']:.1f} s")
    job = os.path.join(folder, "job" + settings_suffix(options))
    run, started = _train(python, scene, dataset, job, options, env)
    mesh = os.path.join(job, "meshes", "mesh.ply")
    metrics = _venv_json(python, ["-m", "demo.meshes", "metrics", mesh, os.path.join(dataset, "truth.ply")],
                         env, f"{scene}: metrics")
    log("bench", f"{scene}: chamfer {100 * (metrics['chamfer'] or float('nan')):.3f}% of the diagonal, "
        f"F@0.5% {metrics['f_05']:.3f}, F@1% {metrics['f_1']:.3f}")
    png = _quality_png(python, scene + settings_suffix(options), mesh, image_dir, env)
    return quality_row(scene, machine, started, run["wall_s"], run["peak_mb"], started.get("views", options.views),
                       (options.size, options.size), metrics=metrics, png=png, settings=getattr(options, "set", None) or ())


def _quality_capture(python, scene, data_dir, options, env, machine, image_dir):
    capture = CAPTURES[scene]
    dataset = os.path.join(data_dir, capture["folder"])
    if not os.path.isfile(os.path.join(dataset, capture["rig_file"])):
        raise BuildError(f"{scene}: {dataset}/{capture['rig_file']} is missing")
    job = os.path.join(QUALITY_OUT, scene, "job" + settings_suffix(options))
    run, started = _train(python, scene, dataset, job, options, env,
                          extra=["--downscale", str(capture["downscale"]),
                                 "--holdout-every", str(capture["holdout_every"])])
    log("bench", f"{scene}: python -m engine evaluate (renders the held-out views)")
    evaluated = run_engine(python, ["evaluate", job, "--downscale", str(capture["eval_downscale"])],
                           os.path.join(job, "evaluate.log"), f"{scene} evaluate", env)
    done = _event(evaluated["events"], "done")
    eval_path = (done.get("outputs") or {}).get("eval")
    if evaluated["code"] != 0 or not eval_path:
        message = _event(evaluated["events"], "error").get("message") or "no error event"
        raise BuildError(f"{scene}: evaluate failed (exit {evaluated['code']}): {message}; "
                         f"see {os.path.join(job, 'evaluate.log')}")
    with open(eval_path, encoding="utf-8") as f:
        evaluation = json.load(f)
    held = len(evaluation.get("views") or [])
    log("bench", f"{scene}: {held} held-out views evaluated in {evaluated['wall_s']:.0f} s: PSNR "
        f"{_fmt(evaluation.get('psnr'), 2)}, mask IoU {_fmt(evaluation.get('mask_iou'), 3) or '-'}")
    images = sorted(p for p in glob.glob(os.path.join(dataset, "*", "*"))
                    if p.lower().endswith((".png", ".jpg", ".jpeg")) and os.sep + "mask" not in p)
    width, height = image_size(images[0]) if images else (0, 0)
    size = (width // capture["downscale"], height // capture["downscale"])
    total = started.get("views") or len(images)
    views = f"{total - held} (+{held})" if held else str(total)
    png = _quality_png(python, scene + settings_suffix(options), os.path.join(job, "meshes", "mesh.ply"),
                       image_dir, env, rig=dataset)
    return quality_row(scene, machine, started, run["wall_s"], run["peak_mb"], views, size,
                       evaluation=evaluation, png=png, settings=getattr(options, "set", None) or ())


def settings_suffix(options):
    """'' for the preset as it is, else a file-name-safe tag of the --set overrides (a run with other
    settings gets its own job folder and picture, and does not overwrite the plain run's)."""
    settings = getattr(options, "set", None) or ()
    if not settings:
        return ""
    tag = "_".join(a.rpartition(".")[2] for a in settings)
    return "_" + re.sub(r"[^A-Za-z0-9=_-]+", "-", tag).replace("=", "-")


def _quality_png(python, scene, mesh, image_dir, env, rig=None):
    """Render the mesh (vertex colours, 512 px) into IMAGE_DIR/quality_<scene>.png; return its path
    relative to docs/ (for the table's link), or the absolute path when it is not under docs/."""
    os.makedirs(image_dir, exist_ok=True)
    png = os.path.join(image_dir, f"quality_{scene}.png")
    arguments = ["-m", "demo.meshes", "snapshot", mesh, png, "--size", "512"]
    if rig:
        arguments += ["--rig", rig]
    _venv_json(python, arguments, env, f"{scene}: the mesh picture")
    log("bench", f"{scene}: wrote {os.path.relpath(png, REPO)} ({os.path.getsize(png) // 1024} KiB)")
    docs = os.path.dirname(BENCHMARKS_DOC)
    inside = os.path.commonpath([os.path.abspath(png), docs]) == docs
    return os.path.relpath(png, docs).replace(os.sep, "/") if inside else png


def bench_quality(options):
    """Synthetic meshes (Chamfer, F-scores against the true surface) and DTU scan 24 (held-out PSNR,
    mask IoU): one row per scene."""
    failed = options.failed = []
    options = argparse.Namespace(**dict(vars(options), size=options.size or 200))  # the size's default is ours
    scenes = list(options.scenes or QUALITY_SCENES)
    unknown = [s for s in scenes if s not in QUALITY_SCENES]
    if unknown:
        raise BuildError(f"unknown quality scene(s) {', '.join(unknown)}; known: {', '.join(QUALITY_SCENES)}")
    data_dir = shared_data_dir()
    if data_dir is None:
        log("bench", "quality: skipped: the shared reference data (meshes/, dtu_scan24/) is not here "
            f"(looked in {', '.join(shared_data_candidates())}; set ${SHARED_DATA_ENV} to its folder)")
        return []
    python = ensure_setup(quiet=True)
    machine = machine_info()
    image_dir = os.path.join(QUALITY_OUT, "images") if options.no_write else QUALITY_IMAGES
    folder = tempfile.mkdtemp(prefix="marble-bench-quality-")
    rows = []
    try:
        env = isolated_env(folder)
        for scene in scenes:
            log("bench", f"quality: {scene}")
            try:
                if scene in CAPTURES:
                    rows.append(_quality_capture(python, scene, data_dir, options, env, machine, image_dir))
                else:
                    rows.append(_quality_synthetic(python, scene, data_dir, options, env, machine, image_dir))
            except BuildError as exc:
                print(f"[bench] error: {exc}", file=sys.stderr, flush=True)
                failed.append(scene)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


# ---------------------------------------------------------------------------------------------------
# dynamic: the synthetic moving, deforming torus trained frame by frame, with and without prediction

DYNAMIC_OUT = os.path.join(REPO, "demo", "out", "dynamic")


def _dynamic_dataset(python, options, env):
    """demo.dynamic_scene's dataset in demo/out/dynamic/data, rendered unless one with the same frames,
    cameras, size and samples is there."""
    folder = os.path.join(DYNAMIC_OUT, "data")
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


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def dynamic_row(machine, started, prediction, metrics, wall_s, options, date=None):
    """One row of the dynamic table from the engine's `started` event and demo.dynamic_eval's metrics."""
    config = started.get("config") or {}
    frames = metrics["frames"]
    later = frames[1:]
    device = started.get("device") or "?"
    if device.startswith("cuda") and machine.get("gpu"):
        device = f"{device}: {machine['gpu']}"
    return {
        "date": date or datetime.date.today().isoformat(), "cpu": machine["cpu"], "cores": str(machine["cores"]),
        "device": device, "backend": started.get("backend") or "?", "preset": config.get("preset", "?"),
        "prediction": "on" if prediction else "off", "frames": str(len(frames)), "cameras": str(metrics["cameras"]),
        "size px": "x".join(str(x) for x in metrics["size"]),
        "steps": f"{config['train']['iterations']} + {config['dynamic']['frame_iterations']}"
                 + (f" + {config['dynamic']['prediction_iterations']}" if prediction else ""),
        "first frame s": _fmt(frames[0]["seconds"], 1), "s/frame": _fmt(_mean([f["seconds"] for f in later]), 1),
        "wall s": _fmt(wall_s, 0),
        "chamfer % mean": _fmt(_mean([f["chamfer"] for f in frames]), 3, 100.0),
        "chamfer % max": _fmt(max(f["chamfer"] for f in frames), 3, 100.0),
        "F@1% mean": _fmt(_mean([f["f_1"] for f in frames]), 3),
        "rotation err deg mean": _fmt(_mean([f["rotation_deg"] for f in later]), 2),
        "rotation err deg max": _fmt(max((f["rotation_deg"] for f in later), default=None), 2),
        "translation err % mean": _fmt(_mean([f["translation"] for f in later]), 2, 100.0),
        "translation err % max": _fmt(max((f["translation"] for f in later), default=None), 2, 100.0),
        "chamfer % per frame": " ".join(_fmt(f["chamfer"], 2, 100.0) for f in frames),
    }


def bench_dynamic(options):
    """Train the synthetic dynamic scene with and without global transformation prediction; one row each."""
    python = ensure_setup(quiet=True)
    machine = machine_info()
    folder = tempfile.mkdtemp(prefix="marble-bench-dynamic-")
    rows = []
    try:
        env = isolated_env(folder)
        data = _dynamic_dataset(python, options, env)
        for prediction in (True, False):
            name = "dynamic " + ("with" if prediction else "without") + " prediction"
            job = os.path.join(DYNAMIC_OUT, "job_" + ("prediction" if prediction else "no_prediction"))
            extra = ["--resolution", str(options.resolution)] + (
                [] if prediction else ["--set", "dynamic.predict_transform=false"])
            run, started = _train(python, name, data, job, options, env, extra)
            metrics = _venv_json(python, ["-m", "demo.dynamic_eval", _event(run["events"], "done")["outputs"]["sequence"],
                                          data], env, f"{name}: evaluating the sequence")
            rows.append(dynamic_row(machine, started, prediction, metrics, run["wall_s"], options))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def bench_sequence(options):
    """Import a 300-frame sequence of 50k-vertex meshes with marble.import_sequence."""
    python = ensure_setup()
    result = _sandboxed_result("sequence", lambda folder: [python, "-m", "demo.sequence_bench"], cwd=REPO)
    machine = machine_info()
    return {
        "date": datetime.date.today().isoformat(), "cpu": machine["cpu"], "cores": str(machine["cores"]),
        "blender": result["blender"], "frames": str(result["frames"]), "vertices": str(result["vertices"]),
        "faces": str(result["faces"]), "MiB": _fmt(result["mib"], 0), "import s": _fmt(result["import_s"], 2),
    }


# ---------------------------------------------------------------------------------------------------
# speed: encoding throughput against its memory floor, training rate, DTU scan 24 to a mesh, a dynamic
# frame. demo.speed_bench measures (torch only, no Blender, so a GPU machine's own python3 runs it);
# its module level is standard library only, so its columns and row builders are imported here.

from demo import speed_bench  # noqa: E402

SPEED_OUT = os.path.join(REPO, "demo", "out", "speed")
SPEED_TORUS = {"views": 40, "size": 160, "samples": 16}


def _speed_torus(python, env):
    """The demo torus for the train part in demo/out/speed/torus (speed_bench's default), rendered
    with Cycles unless one with the same views and size is there."""
    folder = speed_bench.DEFAULT_TRAIN_DATA
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
    """The rows of demo.speed_bench results (--json files, e.g. from a GPU machine), rebuilt from their
    measurements by the same row builders; BuildError for a file that is not one."""
    rows = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                result = json.load(f)
        except (OSError, ValueError) as exc:
            raise BuildError(f"--from-json {path}: cannot read it: {exc}") from None
        if not isinstance(result, dict) or result.get("benchmark") != "speed" or "machine" not in result:
            raise BuildError(f"--from-json {path}: not a result of `python -m demo.speed_bench --json`")
        found = speed_bench.build_rows(result)
        log("bench", f"speed: {len(found)} rows from {path} ({result['machine'].get('gpu') or result['machine'].get('cpu')}, "
            f"{result['machine'].get('date')})")
        for part, why in (result.get("skipped") or {}).items():
            log("bench", f"speed: {path}: {part} skipped there: {why}")
        rows += found
    return rows


def bench_speed(options):
    """Encoding forward+backward per backend against its memory floor, fast-preset training rate, and
    (CUDA, or asked for) DTU scan 24 to a mesh and seconds per dynamic frame: one row per measurement."""
    if getattr(options, "from_json", None):
        return speed_rows_from_json(options.from_json)
    parts = getattr(options, "parts", None) or []
    unknown = [p for p in parts if p not in speed_bench.PARTS]
    if unknown:
        raise BuildError(f"unknown speed part(s) {', '.join(unknown)}; known: {', '.join(speed_bench.PARTS)}")
    python = ensure_setup(quiet=True)
    prepare = getattr(options, "prepare", False)
    folder = tempfile.mkdtemp(prefix="marble-bench-speed-")
    try:
        env = isolated_env(folder)
        # The datasets need Blender (bpy, in .venv): rendered here, carried to a GPU machine that lacks it.
        if prepare or not parts or "train" in parts:
            _speed_torus(python, env)
        if prepare or "dynamic" in parts or (not parts and has_nvidia_gpu()):  # on CUDA it runs by default
            _dynamic_dataset(python, options, env)
        if prepare:
            carry = [os.path.relpath(p, REPO) for p in (speed_bench.DEFAULT_TRAIN_DATA, speed_bench.DEFAULT_DYNAMIC_DATA)]
            log("bench", "speed: datasets ready. On a GPU machine (its own python3 with torch; no Blender needed), "
                f"with {' and '.join(carry)} copied into the same places of the checkout, run from the "
                "repository root: `python3 -m demo.speed_bench --json speed.json` (add --parts, --timeout-s S to "
                "fit its time), then here: `python3 build.py bench speed --from-json speed.json`")
            return []
        os.makedirs(SPEED_OUT, exist_ok=True)
        result_path = os.path.join(SPEED_OUT, "result.json")
        if os.path.exists(result_path):
            os.remove(result_path)
        command = [python, "-m", "demo.speed_bench", "--json", result_path]
        if parts:
            command += ["--parts", ",".join(parts)]
        if getattr(options, "backends", None):
            command += ["--backends", ",".join(options.backends)]
        if getattr(options, "points", None):
            command += ["--points", ",".join(str(p) for p in options.points)]
        if options.iterations:
            command += ["--train-iterations", str(options.iterations)]
        data_dir = shared_data_dir()
        if data_dir and os.path.isdir(os.path.join(data_dir, "dtu_scan24")):
            command += ["--dtu", os.path.join(data_dir, "dtu_scan24")]
        log("bench", f"speed: {shlex.join(command[1:])}")
        code = subprocess.call(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    try:
        with open(result_path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError):
        raise BuildError(f"the speed benchmark failed (exit {code}) and wrote no result") from None
    # The module prints each failure; the table still gets what it measured.
    options.failed.extend(failure.split(":")[0] for failure in result.get("failed") or [])
    return speed_bench.build_rows(result)


def compile_rows(results, machine, date=None):
    """One row per GPU architecture and kernel from `python -m engine.nn.triton_aot`'s JSON lines."""
    rows = []
    for capability in sorted({r["capability"] for r in results}):
        for kernel in sorted({r["kernel"] for r in results}):
            mine = [r for r in results if r["capability"] == capability and r["kernel"] == kernel]
            if not mine:
                continue
            built = [r for r in mine if r["ok"]]
            slowest = max(mine, key=lambda r: r["seconds"])
            biggest = max(built, key=lambda r: r["cubin_bytes"]) if built else None
            rows.append({
                "date": date or datetime.date.today().isoformat(),
                "machine": f"{machine['cpu']} ({machine['cores']} cores)",
                "target": f"sm_{capability}", "kernel": kernel,
                "launches": f"{len(built)} of {len(mine)}",
                "cold s max": f"{slowest['seconds']:.2f}", "cold s total": f"{sum(r['seconds'] for r in mine):.1f}",
                "cubin KB max": f"{biggest['cubin_bytes'] / 1024:.0f}" if biggest else "",
                "notes": (f"slowest {json.dumps(slowest['constexprs'], sort_keys=True)} {slowest['table']}; "
                          f"largest {json.dumps(biggest['constexprs'], sort_keys=True)} {biggest['table']}"
                          if biggest else "; ".join(r.get("error", "")[:200] for r in mine if not r["ok"])),
            })
    return rows


def bench_compile(options):
    """Every launch of the Triton kernels compiled cold for each supported NVIDIA architecture (no GPU
    needed): seconds and code size."""
    python = ensure_setup(quiet=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([python, "-m", "engine.nn.triton_aot"], cwd=REPO, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if not results:
        raise BuildError(f"engine.nn.triton_aot compiled nothing (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    options.failed.extend(f"{r['kernel']} sm_{r['capability']}" for r in results if not r["ok"])
    return compile_rows(results, machine_info())


BENCHMARKS = {
    "demo": {
        "run": bench_demo,
        "title": "demo: the embedded default through the add-on",
        "about": ("`python3 build.py demo`: render the textured torus (Cycles, CPU), build and install the "
                  "extension, train with the `cpu` preset through the add-on, import the mesh. `wall s` is "
                  "the whole run, `train s` the engine's job (from Train to the imported mesh); chamfer is "
                  "the symmetric Chamfer distance to the true surface over the true bounding-box diagonal."),
        "columns": ["date", "cpu", "cores", "gpu", "device", "backend", "preset", "iterations", "views",
                    "train s", "wall s", "chamfer"],
        "key": ["cpu", "cores", "gpu", "device", "backend", "preset", "iterations", "views"],
    },
    "rigs": {
        "run": bench_rigs,
        "title": "rigs: importing a 2,000-camera rig into Blender",
        "about": ("`python3 build.py bench rigs`: writes a 2,000-camera rig (8x8 PNG photographs, one K per "
                  "camera) as an instant-ngp transforms.json and as a COLMAP text model, installs the "
                  "extension into a sandboxed Blender (the bpy module) and times `marble.import_rig` on "
                  "an empty scene: cameras, custom properties, the region estimate and the scene settings, "
                  "without and with each photograph as its camera's background image (`+ images`). "
                  "`read s` is engine.io.rig.load_rig alone (parsing and reading each image's header), "
                  "included in the import times. Median of 3 runs; the target is under 5 s."),
        "columns": ["date", "cpu", "cores", "blender", "cameras", "transforms s", "transforms + images s",
                    "colmap s", "colmap + images s", "read transforms s", "read colmap s"],
        "key": ["cpu", "cores", "blender", "cameras"],
    },
    "jobs": {
        "run": bench_jobs,
        "title": "jobs: how long Blender's interface freezes while the engine trains",
        "about": ("`python3 build.py bench jobs`: `python -m demo.jobs_bench` renders a 24-view torus at 96 px, "
                  "installs the extension into a sandboxed Blender (the bpy module), imports the rig and presses "
                  "Train (cpu preset, 300 iterations, a preview mesh every 25, final mesh at resolution 128) with "
                  "the real engine, calling the job client's tick as Blender's timer does. A tick runs on "
                  "Blender's main thread: its duration is how long the interface cannot respond. `train returns "
                  "ms`: marble.train from call to return (the engine starts in the background); `first progress "
                  "s`: until the panel shows the first iteration (the engine's start, torch import and data "
                  "loading); `tick` figures over every tick of the job; `preview tick max ms`: the slowest tick "
                  "that replaced the preview mesh; `final import ms`: the tick that imported the final mesh."),
        "columns": ["date", "cpu", "cores", "blender", "iterations", "preview every", "train returns ms",
                    "first progress s", "job s", "ticks", "tick median ms", "tick p99 ms", "tick max ms",
                    "previews", "preview tick max ms", "final import ms", "mesh vertices"],
        "key": ["cpu", "cores", "blender", "iterations", "preview every"],
    },
    "quality": {
        "run": bench_quality,
        "title": "quality: reconstruction accuracy on synthetic meshes and DTU scan 24",
        "about": ("`python3 build.py bench quality [--scenes armadillo,spot,bunny,dtu,fox] [--iterations N] "
                  "[--preset cpu] [--set SECTION.FIELD=VALUE]`, with the shared reference data in `../shared/data` (skipped without it). "
                  "**Synthetic scenes** (armadillo: 50K vertices, watertight; spot: 2.9K, watertight; bunny: "
                  "36K, open base): `python -m demo.meshes render` imports the OBJ into a fresh Blender scene, "
                  "scales and centres it (bounding-box diagonal 1.7 at the origin), gives it the demo's "
                  "procedural checker (by object-space position) and soft even light, and renders it with "
                  "Cycles (RGBA, the alpha is the mask) from 64 cameras on a Fibonacci sphere at 200x200 px. "
                  "`chamfer %` is the symmetric Chamfer distance between the reconstruction and the true "
                  "surface (the mean of both directions' mean point-to-surface distances, 20,000 points "
                  "sampled on each) in % of the true bounding-box diagonal; `F@0.5%` and `F@1%` are F-scores "
                  "(harmonic mean of precision and recall of those points) at distance thresholds of 0.5% "
                  "and 1% of that diagonal (engine.metrics). The bunny's open base is closed by any SDF, "
                  "which costs it some precision. **DTU scan 24** (49 photographs, 1600x1200): trained with "
                  "`--downscale 4 --holdout-every 8` (`views` shows the training views and, in brackets, the "
                  "7 held out), then `python -m engine evaluate --downscale 8` renders the held-out views at "
                  "200x150: `held-out PSNR` "
                  "is their mean PSNR against the photographs, `mask IoU` the mean intersection over union of "
                  "rendered opacity and the DTU masks. **Fox** (instant-ngp's capture: 50 hand-held JPEGs, "
                  "1080x1920, no masks, lens distortion): trained with `--downscale 4 --holdout-every 8` "
                  "through the background model (a NeRF outside the region's sphere), held-out views "
                  "rendered at 135x240; the wall it hangs on is inside the region and is reconstructed too. "
                  "`settings` lists `--set` overrides of the preset (blank: the preset as it is). `wall s` is the `python -m engine train` process from "
                  "start to exit (loading, training, mesh extraction); `peak MB` its peak resident memory "
                  "(ru_maxrss from os.wait4 on that process). `mesh` links a Cycles picture of the "
                  "reconstruction with its vertex colours (docs/images/quality_<scene>.png). **Targets** "
                  "(issue 4): on a 2-core CPU with the `cpu` preset at 200 px, each synthetic scene within 5 "
                  "minutes, Chamfer under 0.8% of the diagonal on armadillo and spot, F@1% over 0.8; DTU scan "
                  "24 gives a recognisable mesh with vertex colours."),
        "columns": ["date", "scene", "cpu", "cores", "device", "backend", "preset", "iterations", "settings",
                    "views", "size px", "wall s", "peak MB", "chamfer %", "F@0.5%", "F@1%", "held-out PSNR",
                    "mask IoU", "mesh"],
        "key": ["scene", "cpu", "cores", "device", "backend", "preset", "iterations", "settings", "views",
                "size px"],
    },
    "dynamic": {
        "run": bench_dynamic,
        "includes": ["sequence"],
        "title": "dynamic: a moving, deforming object trained frame by frame",
        "about": ("`python3 build.py bench dynamic [--frames 8] [--cameras 20] [--size 128] [--iterations N] "
                  "[--preset cpu] [--set SECTION.FIELD=VALUE]`: `python -m demo.dynamic_scene` renders a knobbed, "
                  "textured torus with Cycles from fixed cameras (RGBA, the alpha is the mask) while it turns "
                  "about 8 degrees and moves about 3% of its size per frame and deforms (a travelling wave and an "
                  "ovalisation growing to 4% of its size by frame 7); then `python -m engine train` trains every "
                  "frame, once with global transformation prediction (`prediction on`) and once without "
                  "(`dynamic.predict_transform=false`: each frame only fine-tunes the previous frame's network), "
                  "and `python -m demo.dynamic_eval` compares each frame's mesh (world coordinates) with the "
                  "frame's true surface. `steps`: the first frame's training steps + each later frame's + its "
                  "prediction steps. `first frame s` and `s/frame` (the mean of the later frames) are the "
                  "engine's own time per frame, mesh extraction (marching cubes at `--resolution`, 128 by "
                  "default) included; `wall s` the whole process. `chamfer %`: symmetric Chamfer distance "
                  "to the true surface in % of its bounding-box diagonal (mean and worst frame; `per frame` "
                  "lists them in order); `F@1%`: F-score at 1% of the diagonal. `rotation err deg` and "
                  "`translation err %` compare each later frame's world_from_canonical with the true rigid "
                  "motion from the first frame (the rotation's angle; how far the object's centre lands from "
                  "its true place in % of the scene size, the first frame's diagonal). Without prediction the "
                  "transform stays the identity, so these show the motion the network had to absorb."),
        "columns": ["date", "cpu", "cores", "device", "backend", "preset", "prediction", "frames", "cameras",
                    "size px", "steps", "first frame s", "s/frame", "wall s", "chamfer % mean", "chamfer % max",
                    "F@1% mean", "rotation err deg mean", "rotation err deg max", "translation err % mean",
                    "translation err % max", "chamfer % per frame"],
        "key": ["cpu", "cores", "device", "backend", "preset", "prediction", "frames", "cameras", "size px", "steps"],
    },
    "sequence": {
        "run": bench_sequence,
        "title": "sequence: importing a long mesh sequence into Blender",
        "about": ("`python3 build.py bench sequence` (also run by `bench dynamic`): `python -m demo.sequence_bench` "
                  "writes 300 binary PLYs with vertex colours (a rippling, turning torus of 50,000 vertices; every "
                  "file different) and their sequence.json, installs the extension into a sandboxed Blender (the "
                  "bpy module) and times `marble.import_sequence` on an empty scene: every file read and checked, "
                  "one object per frame with its mesh, material and hide_viewport/hide_render keys. The target "
                  "(issue 6) is under 30 s."),
        "columns": ["date", "cpu", "cores", "blender", "frames", "vertices", "faces", "MiB", "import s"],
        "key": ["cpu", "cores", "blender", "frames", "vertices"],
    },
    "speed": {
        "run": bench_speed,
        "title": "speed: hash encoding against its memory floor, training rate, DTU scan 24, a dynamic frame",
        "about": ("`python3 build.py bench speed [--parts encoding,train,dtu,dynamic] [--backends B,...] "
                  "[--points 18,20] [--iterations N] [--prepare] [--from-json FILE]`: `python -m demo.speed_bench` "
                  "measures with torch alone (no Blender), so the same file runs on a GPU machine with its own "
                  "Python (`--json OUT`; `--from-json OUT` merges its rows here; `--prepare` renders the datasets "
                  "it needs for carrying there). **encoding**: forward + backward of the `fast` preset's hash grid "
                  "(14 levels x 2 features, 2^19 table, every level active) on 2^18 and 2^20 uniformly random "
                  "points in one call, per backend, with gradients for the tables only (as training with numerical "
                  "gradients needs; set to None before each call, as the optimiser does; Triton's float16 copy of the "
                  "tables is made once, where training makes it once a step); **taps**: the same for "
                  "`encode_taps` (the point and its 6 central-difference taps a finest cell apart: 7 lookups). "
                  "`ms`: the median call after warm-up (at least 3; CUDA events on a GPU). The memory floor "
                  "counts, per point, lookup and level, the 8 corners' features read (2 bytes each from a float16 "
                  "table, `tables` fp16, else 4), their float32 gradients accumulated (an atomic add reads and "
                  "writes: 8 bytes each), the output written and its gradient read (4 bytes a feature each way), "
                  "plus the point read once (12 bytes): 12 + lookups x levels x features x (8 x table bytes + 64 + "
                  "8) bytes, 2,924 a point with float32 tables and 2,476 with float16 ones for the fast grid "
                  "(`notes`). `floor M points/s` is the device's copy bandwidth measured in the same run (`copy "
                  "GB/s`: `dst.copy_(src)` of 1 GiB on a GPU, 256 MiB on a CPU, bytes read + written over the "
                  "time) over those bytes; `x floor` the measured time over the floor's. Every lookup counts as "
                  "traffic, so cache hits in the small coarse levels can take a kernel under the floor. **train**: "
                  "`python -m engine train --preset fast` on the demo torus (40 views at 160 px, rendered with "
                  "Cycles into demo/out/speed/torus) for `--iterations` steps (default 20 on a CPU, 1,000 on "
                  "CUDA; `workload`): `it/s` over the steady part from the progress events' times (from the step "
                  "every level is open, when the run is twice that long, else after the first fifth; `notes` "
                  "give the steps, the levels open and the samples a step evaluates), `M samples/s` the events' "
                  "samples per step times it/s. **dtu** (on CUDA by default; needs ../shared/data): DTU scan 24 "
                  "at full size with the fast preset's 15,000 steps, `minutes` from starting the engine to its "
                  "`mesh` event. **dynamic** (on CUDA by default): the dynamic benchmark's rendered dataset "
                  "(demo/out/dynamic/data) with the fast preset, `s/frame` the mean of the later frames' own "
                  "seconds (prediction, fine-tuning and the mesh). On a shared CPU other work slows every timing: "
                  "`notes` give the load average when the run started. **Targets** (one H100): encoding forward + "
                  "backward within 2x of its floor; DTU scan 24 to a mesh in under 3 minutes; a dynamic frame in "
                  "under 15 s."),
        "columns": speed_bench.COLUMNS,
        "key": speed_bench.KEY,
    },
    "compile": {
        "run": bench_compile,
        "title": "compile: the Triton kernels built for each NVIDIA architecture",
        "about": ("`python -m engine.nn.triton_aot` (what tests/test_engine_triton_compile.py runs): every launch "
                  "the engine makes (each preset's features per level and SDF network, features 1/2/4/8 for "
                  "the encoding kernels, float32 and float16 tables, position gradients on and off) compiled "
                  "ahead of time with Triton's own compiler and ptxas, no GPU needed, each in an empty Triton "
                  "cache (a user's first run). `launches`: compiled of tried; `cold s`: seconds per launch on "
                  "this CPU (the slowest, and all together); `cubin KB max`: the largest binary. Targets: sm_80 "
                  "(A100, A30), sm_86 (RTX 30xx, A40, A10), sm_89 (RTX 40xx, L40, L4), sm_90 (H100, H200; "
                  "Triton emits sm_90a). Before the kernels were fixed none compiled; with the loop-local "
                  "constexpr removed but the levels still unrolled, the fast preset's fused SDF kernel was "
                  "7.5 MB for sm_90 and the quality preset's had not compiled after 5 minutes."),
        "columns": ["date", "machine", "target", "kernel", "launches", "cold s max", "cold s total",
                    "cubin KB max", "notes"],
        "key": ["machine", "target", "kernel"],
    },
}
BENCHMARKS_DOC = os.path.join(REPO, "docs", "benchmarks.md")
BENCHMARKS_HEADER = ("# Benchmarks\n\nWritten by `python3 build.py bench [NAMES]`: one section per benchmark, "
                     "one row per machine, device and backend (a new run replaces its row). A timing is "
                     "only comparable with one taken on the same machine and backend.\n")


def markdown_table(columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")).replace("|", "/") for c in columns) + " |")
    return "\n".join(lines)


def _parse_table(lines):
    rows, columns = [], None
    for line in lines:
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if columns is None:
            columns = cells
        elif not all(set(c) <= set("-: ") for c in cells):
            rows.append(dict(zip(columns, cells)))
    return rows


def update_benchmarks_doc(name, row, path=BENCHMARKS_DOC):
    """Put `row` into the section of benchmark `name` in docs/benchmarks.md, keeping the rest."""
    spec = BENCHMARKS[name]
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else BENCHMARKS_HEADER
    parts = re.split(r"(?m)^(?=## )", text)
    # The file ends its last section with one newline: give every section its blank line back.
    head, sections = parts[0], [s.rstrip("\n") + "\n\n" for s in parts[1:]]
    heading = f"## {name}"
    index = next((i for i, s in enumerate(sections) if s.splitlines()[0].strip().split(":")[0] == heading), None)
    rows = _parse_table(sections[index].splitlines()) if index is not None else []
    rows = [r for r in rows if [r.get(k) or "" for k in spec["key"]] != [row.get(k) or "" for k in spec["key"]]]
    rows.append(row)
    section = (f"## {spec['title']}\n\n{spec['about']}\n\n"
               + markdown_table(spec["columns"], rows) + "\n\n")
    if index is None:
        sections.append(section)
    else:
        sections[index] = section
    if not head.endswith("\n\n"):
        head = head.rstrip("\n") + "\n\n"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write((head + "".join(sections)).rstrip("\n") + "\n")
    return rows


# ---------------------------------------------------------------------------------------------------
# commands

def cmd_setup(argv):
    parser = argparse.ArgumentParser(prog="build.py setup", description="Create .venv with the pinned packages.")
    parser.add_argument("--force", action="store_true", help="run pip even when the stamp matches")
    args = parser.parse_args(argv)
    ensure_setup(force=args.force)
    return 0


def cmd_test(argv):
    python = ensure_setup()
    # `build.py test tests/test_x.py::name` runs just that; otherwise the whole of tests/.
    paths = [a for a in argv if not a.startswith("-") and os.path.exists(os.path.join(REPO, a.split("::")[0]))]
    targets = [] if paths else ["tests"]
    log("test", "pytest " + shlex.join(targets + argv))
    return _sandboxed("test", [python, "-m", "pytest", *targets, "-q", "--basetemp={sandbox}/pytest",
                               "-o", "cache_dir={sandbox}/pytest-cache", *argv])


def cmd_demo(argv):
    python = ensure_setup()
    log("demo", "reconstructing the embedded default scene (python -m demo.run)")
    return _sandboxed("demo", [python, "-m", "demo.run", *argv])


def cmd_extension(argv):
    parser = argparse.ArgumentParser(prog="build.py extension", description="Build dist/marble-<version>.zip.")
    parser.add_argument("--dist", default=os.path.join(REPO, "dist"), help="output folder (default dist/)")
    args = parser.parse_args(argv)
    path = build_extension(args.dist)
    log("extension", f"built {path}")
    return 0


def cmd_bench(argv):
    parser = argparse.ArgumentParser(prog="build.py bench", description="Run benchmarks; update docs/benchmarks.md.")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(BENCHMARKS)})")
    parser.add_argument("--iterations", type=int, default=0, help="training iterations (0: the preset's own)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    quality = parser.add_argument_group("quality")
    quality.add_argument("--scenes", type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
                         help=f"comma-separated scenes (default all: {','.join(QUALITY_SCENES)})")
    quality.add_argument("--preset", default="cpu", help="engine preset (default cpu)")
    quality.add_argument("--views", type=int, default=64, help="views of a synthetic scene (default 64)")
    quality.add_argument("--size", type=int, help="image size of a synthetic scene (default: quality 200, dynamic 128)")
    quality.add_argument("--samples", type=int, default=16, help="Cycles samples per view (default 16)")
    quality.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                         help="override a preset field in the engine (repeatable; shown in the `settings` column)")
    dynamic = parser.add_argument_group("dynamic")
    dynamic.add_argument("--frames", type=int, default=8, help="frames of the dynamic scene (default 8)")
    dynamic.add_argument("--cameras", type=int, default=20, help="cameras of the dynamic scene (default 20)")
    dynamic.add_argument("--resolution", type=int, default=128, help="marching cubes resolution per frame (default 128)")
    speed = parser.add_argument_group("speed")
    comma_list = lambda text: [s.strip() for s in text.split(",") if s.strip()]  # noqa: E731
    speed.add_argument("--parts", type=comma_list,
                       help=f"of {','.join(speed_bench.PARTS)} (default: encoding,train; all on CUDA)")
    speed.add_argument("--backends", type=comma_list, help="encoding backends (default: every one usable here)")
    speed.add_argument("--points", type=lambda text: [int(p) for p in comma_list(text)],
                       help="log2 of the encoding's point counts (default 18,20)")
    speed.add_argument("--prepare", action="store_true",
                       help="only render the datasets a GPU machine's run needs (it has no Blender)")
    speed.add_argument("--from-json", action="append", metavar="FILE",
                       help="merge the rows of `python -m demo.speed_bench --json FILE` instead of running (repeatable)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    failed = []
    names = list(dict.fromkeys(n for name in args.names or list(BENCHMARKS)
                               for n in [name] + BENCHMARKS[name].get("includes", [])))
    for name in names:
        spec = BENCHMARKS[name]
        log("bench", f"running {name}")
        args.failed = []
        result = spec["run"](args)
        failed += [f"{name} {scene}" for scene in args.failed]
        new_rows = result if isinstance(result, list) else [result]
        if not new_rows:
            continue
        rows = new_rows
        if not args.no_write:
            for row in new_rows:
                rows = update_benchmarks_doc(name, row)
        print(f"\n## {spec['title']}\n\n" + markdown_table(spec["columns"], rows) + "\n", flush=True)
        if not args.no_write:
            log("bench", f"updated {os.path.relpath(BENCHMARKS_DOC, REPO)}")
    if failed:
        print(f"error: failed: {', '.join(failed)}", file=sys.stderr, flush=True)
        return 1
    return 0


COMMANDS = {"setup": cmd_setup, "test": cmd_test, "demo": cmd_demo, "extension": cmd_extension,
            "bench": cmd_bench}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.rstrip())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(__doc__.rstrip())
        print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
