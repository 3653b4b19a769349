# SPDX-License-Identifier: GPL-3.0-or-later
"""The engine's own Python, seen from Blender: where the engine lives, the environment it runs in, the
interpreter to use by default, and `python -m engine doctor`. No bpy: preferences and the job client
both use it."""
import json
import os
import subprocess
import sys

# The extension's root folder: the one holding the `engine` package.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_INFO_FILE = "marble_build.json"  # written into the zip by build.py
DOCTOR_TIMEOUT_S = 120.0                # importing torch the first time can take a while


def engine_root():
    """The folder that holds the `engine` package (the extension's root); tests point it elsewhere."""
    return ROOT


def engine_environment(root):
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)  # Blender's own Python home must not leak into the engine's Python
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"  # events must arrive as they happen, not when a buffer fills
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _venv_python(folder):
    if sys.platform == "win32":
        return os.path.join(folder, ".venv", "Scripts", "python.exe")
    return os.path.join(folder, ".venv", "bin", "python")


def default_python(root=ROOT):
    """The engine interpreter to use when the preference is empty.

    First the "python" entry of marble_build.json (the .venv of the checkout the zip was built from),
    then the .venv next to the source when the add-on runs from the repository itself, else "".
    """
    info = os.path.join(root, BUILD_INFO_FILE)
    if os.path.isfile(info):
        try:
            with open(info, encoding="utf-8") as f:
                python = json.load(f).get("python") or ""
        except (OSError, ValueError, AttributeError):
            python = ""
        if python and os.path.isfile(python):
            return python
    python = _venv_python(root)
    if os.path.isfile(python):
        return python
    return ""


def interpreter_problem(python):
    """What is wrong with `python` that shows without running it (unset, missing, not executable), or None."""
    if not python:
        return "No engine interpreter set: choose a Python that has torch installed"
    if not os.path.isfile(python):
        return f"Not found: {python}"
    if not os.access(python, os.X_OK):
        return f"Not executable: {python}"
    return None


def run_doctor(python, root=None, timeout=DOCTOR_TIMEOUT_S):
    """`python -m engine doctor` in the engine's interpreter: its report (a dict with "ok" and
    "message"); a report with ok False and a message saying what to do when it cannot run at all."""
    problem = interpreter_problem(python)
    if problem is not None:
        return {"ok": False, "message": problem}
    root = root or engine_root()
    try:
        done = subprocess.run([python, "-m", "engine", "doctor"], cwd=root, env=engine_environment(root),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except subprocess.TimeoutExpired:
        return {"ok": False, "message": f"{python} did not answer within {timeout:.0f} s"}
    except OSError as exc:
        return {"ok": False, "message": f"Cannot run {python}: {exc.strerror or exc}"}
    for line in reversed(done.stdout.splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and "ok" in report:
            return report
    error = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"ok": False, "message": f"{python} is not a Python that can run the engine ({error})"}
