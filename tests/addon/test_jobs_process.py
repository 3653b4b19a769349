"""addon/jobs/process.py without Blender: the reader thread against a stand-in stdout (issue 15): a
10 MB line is never kept whole, its full text goes to engine.log, and log_tail reads the stray lines
safely while the reader appends."""
import json
import os
import queue
import threading
import tracemalloc
import types

from addon_conftest import bpy_free

process = bpy_free("addon.jobs.process")
reducer = bpy_free("addon.jobs.reducer")


class Stream:
    """A text stream over `parts` (strings made as they are read, like a pipe): readline(size) as
    TextIOWrapper's, and iteration line by line (what the reader used to do)."""

    def __init__(self, parts):
        self.parts, self.buffer = iter(parts), ""

    def readline(self, size=-1):
        out, n = [], 0
        while size is None or size < 0 or n < size:
            if not self.buffer:
                self.buffer = next(self.parts, "")
                if not self.buffer:
                    break
            take = self.buffer if size is None or size < 0 else self.buffer[:size - n]
            newline = take.find("\n")
            if newline >= 0:
                take = take[:newline + 1]
            out.append(take)
            n += len(take)
            self.buffer = self.buffer[len(take):]
            if take.endswith("\n"):
                break
        return "".join(out)

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self):
        pass


def engine_process(tmp_path, parts):
    fake = types.SimpleNamespace(stdout=Stream(parts), stdin=None, poll=lambda: 0)
    log_path = str(tmp_path / "engine.log")
    open(log_path, "w").close()
    return process.EngineProcess(fake, ["engine"], str(tmp_path), log_path, 0)


def drain(job):
    items = []
    while True:
        item = job.events.get(timeout=10)
        if item is process.EOF:
            return items
        items.append(item)


def test_a_10_mb_line_is_never_kept_whole(tmp_path):
    """A 10 MB stdout line (no event) and a 10 MB error message: the reader keeps a cut copy of each
    (the full texts go to engine.log) and never holds a whole one: its memory peak stays far below 10 MB."""
    chunk = 1 << 16

    def parts():
        yield "progress: "
        for _ in range(160):  # 10 MB without a newline, written as it comes
            yield "x" * chunk
        yield "\n"
        yield json.dumps({"event": "warning", "t": 1.0, "message": "short"}) + "\n"

    job = engine_process(tmp_path, parts())
    tracemalloc.start()
    try:
        job.reader.start()
        job.reader.join(60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not job.reader.is_alive()
    assert peak < 5 << 20, f"the reader held {peak / 2 ** 20:.1f} MB"
    assert [e["message"] for e in drain(job)] == ["short"]
    (stray,) = job.stray_lines
    assert stray.startswith("progress: xxx") and len(stray) < reducer.MAX_MESSAGE_CHARS + 200
    assert "the full text is in" in stray
    with open(job.log_path, encoding="utf-8") as f:
        log = f.read()
    assert "progress: " + "x" * (160 * chunk) + "\n" in log  # the whole line, in the log
    assert len(job.log_tail()) < 20000

    # An event whose message is 10 MB: the event keeps a cut copy, the log the whole message.
    message = "huge error: " + "y" * (10 << 20) + " :end"
    job = engine_process(tmp_path, [json.dumps({"event": "error", "t": 1.0, "message": message}) + "\n"])
    job.reader.start()
    (event,) = drain(job)
    assert event["event"] == "error" and event["message"].startswith("huge error: yyy")
    assert len(event["message"]) < reducer.MAX_MESSAGE_CHARS + 200
    with open(job.log_path, encoding="utf-8") as f:
        assert message in f.read()


def test_log_tail_while_the_reader_appends(tmp_path):
    """log_tail (main thread) reads the stray lines while the reader thread appends to them: always a
    consistent snapshot, never an error."""
    count = 200000
    job = engine_process(tmp_path, (f"stray line {i}\n" for i in range(count)))
    errors, tails = [], 0
    job.reader.start()
    while job.reader.is_alive() or tails == 0:
        try:
            tail = job.log_tail().splitlines()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
            break
        assert len(tail) <= process.LOG_TAIL_LINES
        numbers = [int(line.rsplit(" ", 1)[1]) for line in tail]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # in order, none twice
        tails += 1
    job.reader.join(30)
    assert not errors and tails > 0
    assert job.log_tail().splitlines()[-1] == f"stray line {count - 1}"
    assert isinstance(job.lock, type(threading.Lock()))
    assert job.events.get_nowait() is process.EOF
    assert job.events.empty() and isinstance(job.events, queue.Queue) and os.path.isfile(job.log_path)
