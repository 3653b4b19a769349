# SPDX-License-Identifier: GPL-3.0-or-later
"""The job's state from the engine's events: what each event, a start and an exit say about the job.

Pure: no bpy and no scene changes. `state` is any object with wm.marble_job's attributes (the
property group itself, or a types.SimpleNamespace in tests). Used by the live tick and to show a job
again from its events.jsonl after a file load.
"""
import math
import os

from ...engine.io import protocol
from ...engine.io import sequence as sequence_io

PHASES = {"predict": "predicting its motion", "train": "training"}  # a dynamic job's phases within a frame
# A calibration job's phases (protocol.CALIBRATE_PHASES), and what its progress counts in each.
CALIBRATE_COUNTS = {"read": "Photographs read", "features": "Images with features", "matching": "Pairs matched",
                    "mapping": "Images registered", "write": "Images written"}
# An export's phases (protocol.EXPORT_PHASES), as the Job panel names them.
EXPORT_STEPS = {"extract": "extracting the mesh", "decimate": "decimating", "unwrap": "unwrapping UVs",
                "bake": "baking the texture", "write": "writing the file"}
# A job trains a rig, calibrates photographs into a dataset, or exports a finished job's result.
JOB_KINDS = ("train", "calibrate", "export")
INT_LIMIT = 2 ** 31 - 1      # Blender's IntProperty is 32-bit: a larger number would raise in the tick
FLOAT_LIMIT = 1e30           # Blender's FloatProperty is 32-bit; larger (or non-finite) figures mean nothing
MAX_MESSAGE_CHARS = 2000     # what the job state keeps of one message (the panel re-wraps it on every redraw)


def _number(value, default=0.0):
    """`value` as a float when it is a finite number within FLOAT_LIMIT, else `default` (an engine's
    Infinity, NaN or 1e400 is skipped, never stored)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return default
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return default
    return number if math.isfinite(number) and abs(number) <= FLOAT_LIMIT else default


def _count(value, default=0):
    """`value` as an int for an IntProperty (iteration, total): finite and within INT_LIMIT, else `default`."""
    number = _number(value, None)
    return int(number) if number is not None and abs(number) <= INT_LIMIT else default


def is_integer(value):
    """An int (not a bool) that fits Blender's IntProperty."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= INT_LIMIT


NOTE_CHARS = 120             # room for bounded()'s note: a text cut once passes unchanged


def bounded(text, limit=MAX_MESSAGE_CHARS, where=protocol.LOG_FILE, total=None):
    """`text` cut to `limit` characters, saying how much more there is and where the full text is
    (`total`: the length of the full text when `text` is already only its beginning)."""
    text = str(text)
    total = len(text) if total is None else total
    if total <= limit + NOTE_CHARS and len(text) <= limit + NOTE_CHARS:
        return text
    return f"{text[:limit]}… ({total - limit} more characters; the full text is in the job's {where})"


def has_checkpoint(job_dir):
    folder = os.path.join(job_dir, protocol.CHECKPOINTS_DIR) if job_dir else ""
    return bool(folder) and os.path.isdir(folder) and any(n.endswith(".pt") for n in os.listdir(folder))


def frame_position(state, template="{} of {}"):
    """`template` filled with the trained frame's 1-based position and the job's frame count; "" when
    they are not known."""
    if state.frame_index < 0 or state.frame_count <= 0:
        return ""
    return template.format(state.frame_index + 1, state.frame_count)


def job_kind(state):
    """The job's kind (one of JOB_KINDS; a state without one trains)."""
    value = getattr(state, "kind", "train")
    return value if value in JOB_KINDS else "train"


def calibration_summary(outputs):
    """What a calibration's `done` outputs say, in words."""
    registered, images = outputs.get("registered"), outputs.get("images")
    text = "Calibrated"
    if is_integer(registered) and is_integer(images):
        text += f": {registered} of {images} photographs registered"
    if outputs.get("dataset"):
        text += f"; dataset: {outputs['dataset']}"
    return text


def export_summary(outputs):
    """What an export's `done` outputs say, in words."""
    what = {"glb": "textured mesh", "obj": "textured mesh", "ply": "mesh", "usd": "sequence"}.get(
        outputs.get("format"), "result")
    text = f"Exported the {what}"
    if is_integer(outputs.get("faces")):
        text += f" ({outputs['faces']} faces)"
    elif is_integer(outputs.get("frames")):
        text += f" ({outputs['frames']} frames)"
    return text + (f": {outputs['export']}" if outputs.get("export") else "")


def begin(state, job_dir, resume, total, kind="train"):
    """A job was started (`total`: the scene's iterations; `kind`: one of JOB_KINDS). A resumed job
    keeps showing where it stopped until the engine reports."""
    state.kind = kind
    if not resume:
        state.progress = 0.0
        state.iteration = 0
        state.total = total
        state.loss = 0.0
        state.psnr = 0.0
        state.mesh_path = ""
        state.dynamic = False
        state.frame_count = state.frames_done = 0
        state.frame_index = -1
        state.phase = state.sequence_path = ""
    state.export_path = ""
    state.state = 'running'
    state.eta_s = 0.0
    state.stage = "resuming" if resume else "starting"
    state.frame = -1
    state.message = ""
    state.device = ""
    state.job_dir = job_dir
    state.resumable = False


def update_state(state, event):
    """Copy what one engine event says into the job state (figures and messages only, no scene
    changes): shared by the live tick and by replay()."""
    kind = event.get("event")
    if kind == protocol.STARTED:
        command = event.get("command")
        state.kind = command if command in ("calibrate", "export") else "train"
        device, backend = event.get("device"), event.get("backend")
        state.device = ", ".join(str(x) for x in (device, backend) if x)
        state.dynamic = bool(event.get("dynamic"))
        frames = event.get("frames")
        state.frame_count = len(frames) if state.dynamic and isinstance(frames, list) else 0
    elif kind == protocol.STAGE:
        name = str(event.get("name", ""))
        state.stage = name
        if name in ("frame", "predict") and is_integer(event.get("frame")):
            state.frame = event["frame"]
        if name == "frame":
            state.phase = ""
            if is_integer(event.get("index")):
                state.frame_index = event["index"]
            if is_integer(event.get("count")):
                state.frame_count = event["count"]
        elif name == "predict":
            state.phase = "predict"
        elif name == "calibrate":
            phase = event.get("phase")
            state.phase = phase if phase in protocol.CALIBRATE_PHASES else ""
        elif name == "export":  # an export may print no started event: its stage says what it is
            state.kind = "export"
            state.phase = ""
    elif kind == protocol.PROGRESS:
        iteration, total = _count(event.get("iteration")), _count(event.get("total"))
        state.iteration = iteration
        if total > 0:
            state.total = total
        overall = _number(event.get("sequence_progress"), None)
        if overall is None:  # a calibration or an export: the fraction of all its phases
            overall = _number(event.get("fraction"), None)
        if overall is not None:  # a dynamic job or a calibration: the bar covers the whole job
            state.progress = min(1.0, max(0.0, overall))
        elif total > 0:
            state.progress = min(1.0, max(0.0, iteration / total))
        state.loss = _number(event.get("loss"), state.loss)
        state.psnr = _number(event.get("psnr"), state.psnr)
        state.eta_s = _number(event.get("eta_s"), state.eta_s)
        frame = event.get("frame")
        state.frame = frame if is_integer(frame) else -1
        if is_integer(event.get("frame_index")):
            state.frame_index = event["frame_index"]
        if is_integer(event.get("frame_count")):
            state.frame_count = event["frame_count"]
        if event.get("phase") in (*PHASES, *protocol.CALIBRATE_PHASES, *protocol.EXPORT_PHASES):
            state.phase = event["phase"]
    elif kind == protocol.MESH:
        if event.get("frame") is None and event.get("path"):
            state.mesh_path = str(event["path"])
        if is_integer(event.get("frame")) and event.get("sequence"):
            state.sequence_path = str(event["sequence"])
    elif kind == protocol.WARNING:
        state.message = bounded(event.get("message", ""))
    elif kind == protocol.ERROR:
        state.state = 'failed'
        state.message = bounded(event.get("message") or "The engine reported an error")
    elif kind == protocol.CANCELLED and job_kind(state) == "export":
        state.state = 'cancelled'
        state.message = "Export cancelled: nothing was written or imported"
        state.resumable = False
    elif kind == protocol.CANCELLED:
        state.state = 'cancelled'
        checkpoint = event.get("checkpoint")
        where = f"iteration {_count(event.get('iteration'), state.iteration)}"
        if is_integer(event.get("frame")):
            where = f"frame {event['frame']}, " + where
        state.message = f"Cancelled at {where}; Resume goes on from the checkpoint" if checkpoint else "Cancelled"
        state.resumable = bool(checkpoint)
    elif kind == protocol.DONE:
        outputs = event.get("outputs")
        outputs = outputs if isinstance(outputs, dict) else {}
        if outputs.get("mesh"):
            state.mesh_path = str(outputs["mesh"])
        if outputs.get("sequence"):
            state.sequence_path = str(outputs["sequence"])
            if is_integer(outputs.get("frames")):
                state.frames_done = outputs["frames"]
        if outputs.get("export"):
            state.export_path = str(outputs["export"])
        if job_kind(state) == "calibrate":
            state.message = bounded(calibration_summary(outputs))
        elif job_kind(state) == "export":
            state.message = bounded(export_summary(outputs))
        state.progress = 1.0
        state.eta_s = 0.0


def ended(state, returncode, failure=None, cancel_requested=False, resumable=False, tail="", log_path=""):
    """The engine exited without a final event, or the add-on failed the job (`failure`): say how it
    ended. `tail`: the last lines of its log, shown when it failed on its own."""
    state.resumable = resumable
    if failure is not None:
        state.state = 'failed'
        state.message = bounded(failure)
    elif cancel_requested:
        state.state = 'cancelled'
        state.message = f"The engine stopped (exit code {returncode}) before confirming the cancel"
    else:
        state.state = 'failed'
        if returncode < 0:
            how = (f"The engine was stopped by signal {-returncode} (killed from outside, or the system ran "
                   "out of memory: try the cpu preset or a lower mesh resolution)")
        else:
            how = f"The engine exited with code {returncode} without finishing"
        if resumable:
            how += "; Resume goes on from its last checkpoint"
        if tail:  # the last lines, not the first: what a crash says last is what counts
            tail = tail if len(tail) <= MAX_MESSAGE_CHARS else "…" + tail[-MAX_MESSAGE_CHARS:]
        state.message = how + (f"; last lines of {log_path}:\n{tail}" if tail else "")


def replay(state, job_dir):
    """Show the last state of the job in `job_dir` (absolute; "" for none), read back from its
    events.jsonl (a calibration's is in its dataset folder), when no engine runs for it. Returns False
    when there is no job to show."""
    events_path = os.path.join(job_dir, protocol.EVENTS_FILE) if job_dir else ""
    dataset_events = os.path.join(job_dir, protocol.DATASET_DIR, protocol.EVENTS_FILE) if job_dir else ""
    if events_path and not os.path.isfile(events_path) and os.path.isfile(dataset_events):
        events_path = dataset_events
    state.state = 'idle'
    state.kind = "train"
    state.progress = state.loss = state.psnr = state.eta_s = 0.0
    state.iteration = state.total = 0
    state.frame = state.frame_index = -1
    state.frame_count = state.frames_done = 0
    state.dynamic = False
    state.stage = state.message = state.device = state.mesh_path = state.phase = state.sequence_path = ""
    state.export_path = ""
    state.resumable = False
    state.job_dir = job_dir
    if not events_path or not os.path.isfile(events_path):
        if job_dir and os.path.isdir(job_dir):
            state.message = f"The last job left no {protocol.EVENTS_FILE} in {job_dir}"
        elif job_dir:
            state.message = f"The last job's folder is gone: {job_dir}"
        return False
    final, problems = None, []
    try:
        for event in read_events(events_path, problems):
            try:
                update_state(state, event)
            except (TypeError, ValueError, AttributeError, OverflowError) as exc:  # a damaged event: skipped
                problems.append(f"an event that cannot be shown ({type(exc).__name__})")
                continue
            if event.get("event") in (protocol.ERROR, protocol.CANCELLED, protocol.DONE):
                final = event["event"]
            elif event.get("event") == protocol.STARTED or (
                    event.get("event") == protocol.STAGE and event.get("name") == "export"):
                final = None  # a resumed run (or an export, which may print no started) starts over in the file
    except OSError as exc:
        problems.append(f"cannot be read ({exc.strerror or exc})")
    if state.dynamic:
        # The frames finished so far are those sequence.json lists (a resumed run does not announce them again).
        path = state.sequence_path or sequence_io.sequence_path(job_dir)
        if os.path.isfile(path):
            state.sequence_path = path
            try:
                state.frames_done = sequence_io.count_frames(path)
            except (ValueError, OSError) as exc:
                problems.append(f"{path}: {exc}")
    calibration = job_kind(state) == "calibrate"
    if job_kind(state) == "export":
        # The job's last run was an export (into the same events.jsonl): its end is what shows.
        state.state = {protocol.DONE: 'done', protocol.CANCELLED: 'cancelled'}.get(final, 'failed')
        if final is None:
            state.message = "The export was interrupted: export again"
        state.resumable = False
    elif final == protocol.DONE:
        state.state = 'done'
        if calibration:
            state.message = state.message or "Calibrated"
        elif state.dynamic:
            state.message = (f"Finished: {state.frames_done} frames; sequence: {state.sequence_path}"
                             if state.sequence_path else "Finished")
        else:
            state.message = f"Finished; mesh: {state.mesh_path}" if state.mesh_path else "Finished"
    elif final is None and calibration:
        state.state = 'failed'
        state.message = "Interrupted while calibrating: import the photographs again"
    elif final is None:
        # No final event: the engine was stopped with Blender, or killed.
        state.resumable = has_checkpoint(job_dir)
        state.state = 'cancelled' if state.resumable else 'failed'
        where = f"iteration {state.iteration}"
        if state.dynamic and state.frame >= 0:
            where = f"frame {state.frame}{frame_position(state, ' ({} of {})')}, " + where
        state.message = (f"Interrupted at {where}" + ("; Resume goes on from the last "
                         "checkpoint" if state.resumable else "; no checkpoint was saved, train again"))
    else:
        state.resumable = has_checkpoint(job_dir)
    state.eta_s = 0.0
    if problems:
        note = f"{events_path} is damaged ({', '.join(sorted(set(problems)))}): shown is what could be read"
        state.message = bounded(f"{state.message} ({note})" if state.message else note)
    return True


MAX_EVENT_LINE_BYTES = 64 << 20  # a longer line of events.jsonl is no event: skipped, never decoded


def read_events(path, problems):
    """The events of an events.jsonl file that can be read: a line that is not UTF-8, not JSON, too
    long or too deeply nested is skipped, and `problems` says so (a damaged or foreign file restores
    what it can and never raises, except OSError when it cannot be opened)."""
    with open(path, "rb") as f:
        while True:
            raw = f.readline(MAX_EVENT_LINE_BYTES)
            if not raw:
                return
            if len(raw) >= MAX_EVENT_LINE_BYTES and not raw.endswith(b"\n"):
                problems.append("a line too long to be an event")
                while raw and not raw.endswith(b"\n"):  # skip the rest of it, a piece at a time
                    raw = f.readline(MAX_EVENT_LINE_BYTES)
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                problems.append("bytes that are not UTF-8 text")
                text = raw.decode("utf-8", "replace")
            try:
                event = protocol.decode(text)
            except RecursionError:  # JSON nested deeper than Python's parser goes
                problems.append("a line nested too deeply")
                continue
            if event is not None:
                yield event
