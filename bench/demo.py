"""demo: the embedded default end to end through the add-on (`python3 build.py demo`), timed."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from bench.harness import OUT, today
from bench.machine import machine_info
from tools import REPO, BuildError
from tools.env import ensure_setup
from tools.sandbox import isolated_env

SPEC = {
    "title": "demo: the embedded default through the add-on",
    "columns": ["date", "cpu", "cores", "gpu", "device", "backend", "scene", "preset", "iterations", "views",
                "train s", "export s", "wall s", "chamfer"],
    "key": ["cpu", "cores", "gpu", "device", "backend", "scene", "preset", "iterations", "views"],
}
SCENES = ("monkey", "torus")    # demo.run's --scene choices (the first is its default)


def run(options):
    python = ensure_setup()
    command = [python, "-m", "demo.run"]
    scenes = [name for name in (getattr(options, "scenes", None) or []) if name in SCENES]
    if scenes:
        command += ["--scene", scenes[0]]
    if options.iterations:
        command += ["--iterations", str(options.iterations)]
    folder = tempfile.mkdtemp(prefix="marble-bench-")
    result_file = os.path.join(OUT, "result.json")
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
        "date": today(),
        "cpu": machine["cpu"], "cores": str(machine["cores"]), "gpu": machine["gpu"] or "-",
        "device": details.get("device", "?"), "backend": details.get("backend", "?"),
        "scene": details.get("scene", scenes[0] if scenes else SCENES[0]),
        "preset": details.get("preset", "cpu"), "iterations": str(details.get("iterations", "?")),
        "views": str(details.get("views", "?")),
        "train s": f"{timings['train']:.1f}" if "train" in timings else "?",
        "export s": f"{timings['export']:.1f}" if "export" in timings else "-",
        "wall s": f"{wall:.1f}",
        "chamfer": f"{float(match.group(1)):.4f}",
    }
