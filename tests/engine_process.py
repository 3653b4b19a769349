"""`python -m engine` run as the add-on runs it, for the tests of tests/engine: events on stdout,
one error event for bad input, events read as they come."""
import os
import subprocess
import sys
import time

from conftest import REPO

from engine.io import protocol


def engine(args, stdin=subprocess.PIPE):
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "engine"] + args, cwd=REPO, env=env, text=True,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_engine(args, timeout=120):
    # No pipe on stdin: the end of a piped stdin means "the caller is gone" and cancels the run.
    proc = engine(args, stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.strip()]
    events = [protocol.decode(line) for line in lines]
    assert None not in events, f"stdout must hold only events:\n{out}"
    return proc.returncode, events, err


def assert_one_error(code, events, err, *expected):
    assert code == protocol.EXIT_BAD_INPUT, err
    errors = [e for e in events if e["event"] == protocol.ERROR]
    assert len(errors) == 1 and events[-1] is errors[0]
    for text in expected:
        assert text in errors[0]["message"], errors[0]["message"]
    assert "Traceback" not in err


def read_until(proc, kind, timeout=120, match=None):
    """Events read from proc's stdout up to and including the first of `kind` (for which `match(event)`
    holds, when given)."""
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        event = protocol.decode(line)
        if event is not None:
            events.append(event)
            if event["event"] == kind and (match is None or match(event)):
                return events
    raise AssertionError(f"no {kind} event; got {events}; stderr: {proc.stderr.read() if proc.stderr else '(in a file)'}")
