"""The engine's side of the event contract: JSON lines on stdout (copied to events.jsonl), human
log lines on stderr, and the cancel request (a `cancel` line on stdin, SIGINT or SIGTERM)."""
import os
import signal
import stat
import sys
import threading
import time

from .io import protocol


class Emitter:
    def __init__(self, job_dir=None, stream=None):
        self.start = time.monotonic()
        self.stream = stream or sys.stdout
        self.file = None
        if job_dir is not None:
            self.attach(job_dir)

    def attach(self, job_dir):
        """Start copying events into JOB/events.jsonl (appending: a resumed job keeps its history)."""
        os.makedirs(job_dir, exist_ok=True)
        self.file = open(os.path.join(job_dir, protocol.EVENTS_FILE), "a", encoding="utf-8")

    def elapsed(self):
        return time.monotonic() - self.start

    def emit(self, kind, **fields):
        line = protocol.encode(protocol.make_event(kind, self.elapsed(), **self.fields(fields)))
        if self.shows(kind):
            self.stream.write(line + "\n")
            self.stream.flush()
        if self.file is not None:
            try:
                self.file.write(line + "\n")
                self.file.flush()
            except OSError as exc:  # a full disk: stdout (the add-on) still gets every event
                self.file = None
                self.log(f"warning: {protocol.EVENTS_FILE} is no longer written ({exc.strerror or exc})")

    def fields(self, fields):
        """An event's fields as written (RankEmitter adds the rank)."""
        return fields

    def shows(self, kind):
        """Whether events of `kind` go to stdout as well as events.jsonl."""
        return True

    def log(self, message):
        sys.stderr.write(f"[marble {self.elapsed():7.1f}s] {message}\n")
        sys.stderr.flush()

    def warn(self, message):
        self.log("warning: " + message)
        self.emit(protocol.WARNING, message=message)

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


# What the processes of a spread job other than rank 0 print on stdout (all of their events go to
# JOB/ranks/R/events.jsonl): the add-on follows rank 0's progress and every rank's frames, warnings and
# errors (engine/train/ranks.py).
FORWARDED = (protocol.MESH, protocol.WARNING, protocol.ERROR)


class RankEmitter(Emitter):
    """The events of a torchrun rank after 0: all into JOB/ranks/R/events.jsonl, and the FORWARDED kinds, with
    the rank's number, onto stdout beside rank 0's."""

    def __init__(self, rank, stream=None):
        super().__init__(stream=stream)
        self.rank = rank

    def fields(self, fields):
        return dict(fields, rank=self.rank)

    def shows(self, kind):
        return kind in FORWARDED

    def log(self, message):
        super().log(f"rank {self.rank}: {message}")


def emitter_for(command, environ=None):
    """The emitter of this process: a RankEmitter for `train` as a torchrun rank after 0."""
    env = os.environ if environ is None else environ
    rank = env.get("RANK", "").strip()
    if command == "train" and "WORLD_SIZE" in env and rank.isdigit() and int(rank) > 0:
        return RankEmitter(int(rank))
    return Emitter()


class CancelWatch:
    """Sets `requested` on a `cancel` line on stdin, SIGINT or SIGTERM; the training loop polls it.

    When stdin is a pipe, its end counts as a cancel too: the program that started the engine (Blender)
    has gone away, and training on with nobody listening would only hold the CPU or GPU."""

    def __init__(self, stdin=None):
        self.requested = threading.Event()
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread (tests calling the trainer directly)
                pass
        stdin = sys.stdin if stdin is None else stdin
        if stdin is not None and not stdin.isatty():
            threading.Thread(target=self._read, args=(stdin, _is_pipe(stdin)), daemon=True,
                             name="marble-stdin").start()

    def _on_signal(self, signum, frame):
        self.requested.set()

    def _read(self, stdin, cancel_at_end):
        try:
            for line in stdin:
                if line.strip() == protocol.CANCEL_LINE:
                    self.requested.set()
                    return
        except (OSError, ValueError):
            return
        if cancel_at_end:
            sys.stderr.write("[marble] stdin closed: the program that started the engine is gone; stopping\n")
            self.requested.set()

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _is_pipe(stream):
    try:
        return stat.S_ISFIFO(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False
