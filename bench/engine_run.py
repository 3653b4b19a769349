"""Running the engine's command line and reading its events (standard library only): the one
run_engine of the benchmarks, the build side's and the speed probe's alike."""
import os
import subprocess
import sys
import threading
import time

from tools import REPO


def _print(message):
    print(f"[bench] {message}", flush=True)


def run_engine(arguments, log_path, tag="engine", python=None, env=None, timeout_s=None, say=_print, processes=1):
    """Run `PYTHON -m engine ARGUMENTS` in the repository root (stdin from /dev/null: a pipe that closes
    would cancel it; stderr into `log_path`), printing its progress now and then through `say`;
    `processes` > 1: under torchrun (`-m torch.distributed.run --standalone`), one engine a process.

    Returns dict(code, wall_s, peak_mb, timed_out, events, log): every JSON event with `_wall`, the
    seconds from our start to its arrival; peak_mb the engine process's peak resident memory (ru_maxrss
    of os.wait4 on that child, which counts its own reaped children too) in MiB, None off POSIX. Past
    timeout_s the engine is asked to stop (SIGTERM: it saves a checkpoint and ends with `cancelled`).
    """
    from engine.io.protocol import decode  # standard library only, like this module

    launcher = [] if processes <= 1 else ["-m", "torch.distributed.run", "--standalone",
                                          f"--nproc-per-node={int(processes)}"]
    command = [python or sys.executable, *launcher, "-m", "engine", *arguments]
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    events = []
    started = last_print = time.perf_counter()
    state = {"timed_out": False}
    with open(log_path, "w", encoding="utf-8") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)

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
                event = decode(line)
                if event is None:
                    continue
                now = time.perf_counter()
                event["_wall"] = now - started
                events.append(event)
                kind = event.get("event")
                if kind == "progress" and now - last_print >= 15.0:
                    last_print = now
                    say(f"{tag}: {progress_text(event)}  {now - started:.0f} s")
                elif kind in ("stage", "warning", "error", "mesh"):
                    say(f"{tag}: {kind} {event.get('name') or event.get('message') or event.get('path')}")
        except BaseException:
            process.terminate()
            raise
        finally:
            process.stdout.close()
            if timer:
                timer.cancel()
            peak_mb = None
            if os.name == "posix":
                _, status, usage = os.wait4(process.pid, 0)
                process.returncode = os.waitstatus_to_exitcode(status)
                peak_mb = usage.ru_maxrss / 1024.0  # KiB on Linux
            else:
                process.wait()
    return {"code": process.returncode, "wall_s": time.perf_counter() - started, "peak_mb": peak_mb,
            "timed_out": state["timed_out"], "events": events, "log": log_path}


def progress_text(event):
    psnr = event.get("psnr")
    return (f"{event.get('iteration')}/{event.get('total')}"
            + (f" frame {event.get('frame')}" if event.get("frame") is not None else "")
            + (f"  psnr {psnr:.1f}" if isinstance(psnr, (int, float)) else ""))


def last_event(events, kind):
    """The last event of `kind` (e.g. "started", "done", "error"), or {}."""
    return next((e for e in reversed(events) if e.get("event") == kind), {})


def log_tail(path, chars=1500):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""
