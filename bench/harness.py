"""What the build side of the benchmarks shares (standard library only): the sandboxed helper
processes in the .venv, one training run through the engine's command line, cell formatting."""
import datetime
import json
import os
import shlex
import shutil
import subprocess
import tempfile

from bench.engine_run import last_event, run_engine
from tools import REPO, BuildError, log
from tools.sandbox import isolated_env

OUT = os.path.join(REPO, "demo", "out")  # the benchmarks' scratch data (git-ignored)


def fmt(value, digits, scale=1.0):
    """`value * scale` with `digits` decimals; '' for None."""
    return "" if value is None else f"{float(value) * scale:.{digits}f}"


def today():
    return datetime.date.today().isoformat()


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def device_label(started, machine):
    """The engine's device, with the GPU's name when it is a CUDA device."""
    device = started.get("device") or "?"
    if device.startswith("cuda") and machine.get("gpu"):
        device = f"{device}: {machine['gpu']}"
    return device


def sandboxed_result(name, command, cwd=REPO):
    """Run command(folder) in a sandbox folder (its HOME, caches and Blender user folder) and return
    the JSON of its last `RESULT {...}` line; BuildError with the output's tail when it fails."""
    folder = tempfile.mkdtemp(prefix=f"marble-bench-{name}-")
    try:
        process = subprocess.run(command(folder), cwd=cwd, env=isolated_env(folder), capture_output=True, text=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise BuildError(f"the {name} benchmark failed (exit {process.returncode}):\n"
                         f"{(process.stdout + process.stderr)[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def venv_json(python, arguments, env, what):
    """Run `python ARGUMENTS` (a .venv helper printing one JSON line last) and return that JSON."""
    result = subprocess.run([python, *arguments], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise BuildError(f"{what} failed (exit {result.returncode}):\n"
                         f"{(result.stdout + result.stderr)[-3000:]}".rstrip())
    return json.loads(lines[-1])


def train(python, scene, data, job, options, env, extra=(), processes=1):
    """`python -m engine train` of `data` into the (emptied) folder `job` with options.preset, its
    --set overrides and --iterations (under torchrun with `processes` > 1); returns (run_engine's dict,
    the `started` event)."""
    if os.path.isdir(job):
        shutil.rmtree(job)
    os.makedirs(job)
    arguments = ["train", "--data", data, "--out", job, "--preset", options.preset, *extra]
    for assignment in getattr(options, "set", None) or []:
        arguments += ["--set", assignment]
    if options.iterations:
        arguments += ["--iterations", str(options.iterations)]
    launcher = "python -m engine" if processes <= 1 else f"torchrun --nproc-per-node={processes} -m engine"
    log("bench", f"{scene}: {launcher} {shlex.join(arguments)}")
    run = run_engine(arguments, os.path.join(job, "engine.log"), scene, python=python, env=env, processes=processes)
    started = last_event(run["events"], "started")
    if run["code"] != 0 or not last_event(run["events"], "done"):
        message = last_event(run["events"], "error").get("message") or "no error event"
        raise BuildError(f"{scene}: training failed (exit {run['code']}): {message}; "
                         f"see {os.path.join(job, 'engine.log')}")
    peak = "" if run["peak_mb"] is None else f", peak {run['peak_mb']:.0f} MB"
    log("bench", f"{scene}: trained in {run['wall_s']:.1f} s on {started.get('device')} "
        f"({started.get('backend')}){peak}")
    return run, started
