"""contention: the same training job alone with all threads, alone with one thread, and beside one
busy process, in one run (`python3 build.py bench contention [--iterations N]`), as steps per second
and ratios. What engine.threads chose is in each run's log and in the row."""
import os
import subprocess
import sys

from bench.engine_run import run_engine
from bench.harness import fmt, today
from bench.machine import machine_info
from bench.speed import speed_torus
from tools import REPO, BuildError, log
from tools.env import ensure_setup

SPEC = {
    "title": "contention: training beside another busy process",
    "columns": ["date", "cpu", "cores", "preset", "iterations", "alone it/s", "one thread it/s",
                "beside busy it/s", "one thread / alone", "beside busy / one thread", "threads chosen", "notes"],
    "key": ["cpu", "cores", "preset", "iterations"],
}
OUT = os.path.join(REPO, "demo", "out", "contention")
BUSY = "while True: pass"  # one core's worth of work that never waits


def steady_rate(events, skip=10):
    """Steps per second between the first progress event past `skip` steps and the last, by arrival time."""
    progress = [e for e in events if e.get("event") == "progress" and e.get("iteration", 0) > skip]
    if len(progress) < 2 or progress[-1]["_wall"] <= progress[0]["_wall"]:
        return None
    return (progress[-1]["iteration"] - progress[0]["iteration"]) / (progress[-1]["_wall"] - progress[0]["_wall"])


def threads_chosen(log_path):
    """The engine's own line saying how many threads it took."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            return next((line.split("] ", 1)[-1].strip() for line in f if "CPU thread" in line), "")
    except OSError:
        return ""


def train(python, data, name, iterations, env):
    job = os.path.join(OUT, name)
    result = run_engine(["train", "--data", data, "--out", job, "--overwrite", "--preset", "cpu", "--iterations",
                         str(iterations), "--resolution", "32", "--set", "train.checkpoint_every=0"],
                        os.path.join(OUT, f"{name}.log"), tag=f"contention {name}", python=python, env=env)
    rate = steady_rate(result["events"])
    if result["code"] != 0 or rate is None:
        raise BuildError(f"contention: the {name} run failed (exit {result['code']}); see {result['log']}")
    return rate, threads_chosen(result["log"])


def rows(machine, iterations, alone, one, busy, chosen, date=None):
    return {"date": date or today(), "cpu": machine["cpu"], "cores": str(machine["cores"]), "preset": "cpu",
            "iterations": str(iterations), "alone it/s": fmt(alone, 2), "one thread it/s": fmt(one, 2),
            "beside busy it/s": fmt(busy, 2), "one thread / alone": fmt(one / alone, 2),
            "beside busy / one thread": fmt(busy / one, 2), "threads chosen": chosen,
            "notes": "target: beside busy / one thread >= 1 (a busy neighbour costs no more than its core)"}


def run(options):
    python = ensure_setup()
    iterations = options.iterations or 150
    env = dict(os.environ)
    data = speed_torus(python, env)
    os.makedirs(OUT, exist_ok=True)
    alone, _ = train(python, data, "alone", iterations, env)
    one, _ = train(python, data, "one-thread", iterations, dict(env, MARBLE_THREADS="1"))
    log("bench", "contention: starting one busy process beside the engine")
    neighbour = subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.DEVNULL)
    try:
        busy, chosen = train(python, data, "beside-busy", iterations, env)
    finally:
        neighbour.kill()
        neighbour.wait()
    return rows(machine_info(), iterations, alone, one, busy, chosen)
