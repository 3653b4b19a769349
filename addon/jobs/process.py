# SPDX-License-Identifier: GPL-3.0-or-later
"""The engine's process: spawned in its job folder with stderr appended to engine.log, and a reader
thread that decodes stdout into events on a queue and touches nothing else (never Blender data).
Cancel (a line on stdin), terminate, kill, and the log's tail for a failure message. No bpy."""
import collections
import os
import queue
import subprocess
import threading

from ...engine.io import protocol

LOG_TAIL_LINES = 12
EOF = object()              # put on the queue by the reader thread when stdout closes


class JobError(Exception):
    """A job that cannot start; the message tells the user what to do."""


class EngineProcess:
    """A running engine: its process, the queue the reader thread fills, and when it was asked to stop."""

    def __init__(self, process, command, job_dir, log_path, log_offset):
        self.process = process
        self.command = command
        self.job_dir = job_dir
        self.log_path = log_path
        self.log_offset = log_offset          # where this run's output starts in engine.log
        self.events = queue.Queue()
        self.stray_lines = collections.deque(maxlen=LOG_TAIL_LINES)  # stdout lines that are no events
        self.final = None                     # kind of the final event once it arrived
        self.final_at = None
        self.eof = False
        self.exited_at = None
        self.cancel_requested_at = None
        self.terminated_at = None
        self.reader = threading.Thread(target=_read_events, args=(process.stdout, self.events, self.stray_lines),
                                       name="marble-engine-reader", daemon=True)

    def send_cancel(self):
        try:
            self.process.stdin.write(protocol.CANCEL_LINE + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):
            pass  # it already exited (or closed stdin); the tick will see that

    def request_cancel(self, now):
        """Ask the engine to stop (it saves a checkpoint first), once; False when already asked."""
        if self.cancel_requested_at is not None:
            return False
        self.cancel_requested_at = now
        self.send_cancel()
        return True

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, timeout):
        """SIGTERM (the engine saves a checkpoint as on cancel), then kill when it does not stop in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def close(self):
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def log_tail(self, lines=LOG_TAIL_LINES):
        """The last lines this run wrote to engine.log (plus stray stdout), for a failure message."""
        text = ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(self.log_offset, size - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            pass
        tail = [line for line in text.splitlines() if line.strip()] + list(self.stray_lines)
        return "\n".join(tail[-lines:])


def _read_events(stream, events, stray_lines):
    # Runs on the reader thread: only the queue and the deque are touched here, never Blender data.
    try:
        for line in stream:
            event = protocol.decode(line)
            if event is not None:
                events.put(event)
            elif line.strip():
                stray_lines.append(line.rstrip())
    except (OSError, ValueError):
        pass
    finally:
        events.put(EOF)


def spawn(command, job_dir, env):
    """Start `command` in `job_dir` (so the engine writes nothing stray into the installed extension),
    stderr appended to the job's engine.log; returns (Popen, log path, where this run's log starts).
    Raises JobError when it cannot."""
    log_path = os.path.join(job_dir, protocol.LOG_FILE)
    try:
        log = open(log_path, "ab")  # appended: a resumed job keeps the earlier runs' log
    except OSError as exc:
        raise JobError(f"Cannot write {log_path}: {exc.strerror}") from None
    try:
        log_offset = log.tell()
        process = subprocess.Popen(
            command, cwd=job_dir, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            text=True, encoding="utf-8", errors="replace", bufsize=1,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except OSError as exc:
        raise JobError(f"Cannot start the engine with {command[0]}: {exc.strerror or exc}") from None
    finally:
        log.close()  # the child holds its own handle
    return process, log_path, log_offset
