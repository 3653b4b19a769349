"""The .venv and its pinned packages (standard library only).

ensure_setup() creates .venv with Python 3.11 and installs PINS (engine/pins.py: the engine's and the
developer's pins) unless its stamp says that is done;
check_packages() says what is missing, of the wrong version or does not import.
"""
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from engine import pins  # standard library data (tests/build/test_tools.py)
from tools import REPO, BuildError, log
from tools.sandbox import isolated_env

VENV = os.path.join(REPO, ".venv")
# The pinned packages live in engine/pins.py (the extension zip carries it for Install Engine); the
# checkout's .venv gets the engine's and the developer's.
PYTHON_VERSION = pins.PYTHON_VERSION
PINS = {**pins.ENGINE_PINS, **pins.DEVELOPER_PINS}
PLATFORM_PINS = pins.PLATFORM_PINS
IMPORT_NAMES = pins.IMPORT_NAMES
TORCH_INDEX_ENV = "MARBLE_TORCH_INDEX"
STAMP_FILE = "marble-setup.json"


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
    return pins.for_platform(PINS)


def requirements():
    return pins.requirements(PINS)


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
            run_checked([base, "-m", "venv", "--clear", VENV])
            created = True
    else:
        base = find_base_python()
        say(f"creating {VENV} with {base} (Python {_python_version(base)})")
        run_checked([base, "-m", "venv", VENV])
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
    run_checked(pip)
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


def run_checked(command, **kwargs):
    result = subprocess.run(command, **kwargs)
    if result.returncode != 0:
        raise BuildError(f"command failed with exit code {result.returncode}: {' '.join(command)}")
    return result
