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
from .reducer import MAX_MESSAGE_CHARS, bounded

LOG_TAIL_LINES = 12
EOF = object()              # put on the queue by the reader thread when stdout closes
READ_CHUNK_CHARS = 1 << 20  # the reader reads a line at most this much at a time
MAX_EVENT_LINE_CHARS = 64 << 20  # a longer stdout line is no event: streamed to engine.log, never kept whole
MAX_TEXT_CHARS = MAX_MESSAGE_CHARS  # what is kept of one stray stdout line or event message (the log has it all)


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
        self.lock = threading.Lock()          # guards stray_lines: the reader thread appends, the tick reads
        self.final = None                     # kind of the final event once it arrived
        self.final_at = None
        self.eof = False
        self.last_item_at = None              # when the tick last took something off the queue
        self.exited_at = None
        self.cancel_requested_at = None
        self.terminated_at = None
        self.reader = threading.Thread(target=_read_events, args=(process.stdout, self.events, self),
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
        with self.lock:  # a snapshot: the reader thread may be appending meanwhile
            stray = list(self.stray_lines)
        tail = [line for line in text.splitlines() if line.strip()] + stray
        return "\n".join(tail[-lines:])

    def add_stray_line(self, line):
        """A stdout line that is no event (reader thread): kept for the log tail, at most MAX_TEXT_CHARS."""
        with self.lock:
            self.stray_lines.append(line)

    def log_text(self, title, pieces):
        """Append `title` and the text `pieces` (an iterable of strings) to engine.log: the full text of
        something cut short in the job state. Never raises."""
        try:
            with open(self.log_path, "a", encoding="utf-8", errors="replace") as log:
                log.write(f"[marble add-on] {title}:\n")
                for piece in pieces:
                    log.write(piece)
                log.write("\n")
        except (OSError, TypeError):
            pass


def _cut(text, total=None):
    return bounded(text, MAX_TEXT_CHARS, total=total)


def _read_line(stream, owner):
    """One line of `stream` (None at its end), read at most READ_CHUNK_CHARS at a time. A line that is
    no event is never kept whole: past MAX_TEXT_CHARS its text streams into engine.log and a cut copy
    is returned; an event line is kept up to MAX_EVENT_LINE_CHARS."""
    first = stream.readline(READ_CHUNK_CHARS)
    if not first:
        return None
    if first.endswith("\n"):
        return first
    if not first.lstrip().startswith("{"):  # no event: stream the rest of it into the log
        return _stream_to_log(stream, owner, [first])
    pieces, size = [first], len(first)
    while not pieces[-1].endswith("\n"):
        piece = stream.readline(READ_CHUNK_CHARS)
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
        if size > MAX_EVENT_LINE_CHARS:
            return _stream_to_log(stream, owner, pieces)
    return "".join(pieces)


def _stream_to_log(stream, owner, pieces):
    """The rest of a long line goes piece by piece into engine.log; returns its first MAX_TEXT_CHARS."""
    head, total = "".join(pieces)[:MAX_TEXT_CHARS + 1], sum(len(p) for p in pieces)
    ended = [pieces[-1].endswith("\n")]

    def rest():
        nonlocal total
        yield from pieces
        pieces.clear()  # what was read so far is in the log now: not kept
        while not ended[0]:
            piece = stream.readline(READ_CHUNK_CHARS)
            if not piece:
                break
            total += len(piece)
            ended[0] = piece.endswith("\n")
            yield piece

    owner.log_text("a long line on the engine's stdout", rest())
    while not ended[0]:  # the log could not be written: still read (and drop) the rest of the line
        piece = stream.readline(READ_CHUNK_CHARS)
        if not piece:
            break
        total += len(piece)
        ended[0] = piece.endswith("\n")
    return _cut(head.rstrip("\n"), total) + "\n"


def _bounded_event(event, owner):
    """An event whose message is longer than MAX_TEXT_CHARS keeps a cut copy; the full text goes to the log."""
    message = event.get("message")
    if isinstance(message, str) and len(message) > MAX_TEXT_CHARS:
        owner.log_text(f"the full message of the engine's {event.get('event')} event", [message])
        event["message"] = _cut(message)
    return event


def _read_events(stream, events, owner):
    # Runs on the reader thread: only the queue, the stray lines (under owner.lock) and engine.log are
    # touched here, never Blender data.
    try:
        while True:
            line = _read_line(stream, owner)
            if line is None:
                break
            try:
                event = protocol.decode(line)
            except RecursionError:  # JSON nested deeper than Python's parser goes: no event
                event = None
            if event is not None:
                events.put(_bounded_event(event, owner))
            elif line.strip():
                owner.add_stray_line(_cut(line.rstrip()))
            del line, event
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
