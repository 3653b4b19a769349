# SPDX-License-Identifier: GPL-3.0-or-later
"""The job's state from the engine's events: what each event, a start and an exit say about the job.

Pure: no bpy and no scene changes. `state` is any object with wm.marble_job's attributes (the
property group itself, or a types.SimpleNamespace in tests). Used by the live tick and to show a job
again from its events.jsonl after a file load.
"""
import os

from ...engine.io import protocol
from ...engine.io import sequence as sequence_io

PHASES = {"predict": "predicting its motion", "train": "training"}  # a dynamic job's phases within a frame


def _number(value, default=0.0):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def has_checkpoint(job_dir):
    folder = os.path.join(job_dir, protocol.CHECKPOINTS_DIR) if job_dir else ""
    return bool(folder) and os.path.isdir(folder) and any(n.endswith(".pt") for n in os.listdir(folder))


def frame_position(state, template="{} of {}"):
    """`template` filled with the trained frame's 1-based position and the job's frame count; "" when
    they are not known."""
    if state.frame_index < 0 or state.frame_count <= 0:
        return ""
    return template.format(state.frame_index + 1, state.frame_count)


def begin(state, job_dir, resume, total):
    """A job was started (`total`: the scene's iterations). A resumed job keeps showing where it
    stopped until the engine reports."""
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
    elif kind == protocol.PROGRESS:
        iteration, total = int(_number(event.get("iteration"))), int(_number(event.get("total")))
        state.iteration = iteration
        if total > 0:
            state.total = total
        overall = event.get("sequence_progress")
        if is_integer(overall) or isinstance(overall, float):  # a dynamic job: the bar covers every frame
            state.progress = min(1.0, max(0.0, float(overall)))
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
        if event.get("phase") in PHASES:
            state.phase = event["phase"]
    elif kind == protocol.MESH:
        if event.get("frame") is None and event.get("path"):
            state.mesh_path = str(event["path"])
        if is_integer(event.get("frame")) and event.get("sequence"):
            state.sequence_path = str(event["sequence"])
    elif kind == protocol.WARNING:
        state.message = str(event.get("message", ""))
    elif kind == protocol.ERROR:
        state.state = 'failed'
        state.message = str(event.get("message") or "The engine reported an error")
    elif kind == protocol.CANCELLED:
        state.state = 'cancelled'
        checkpoint = event.get("checkpoint")
        where = f"iteration {event.get('iteration', state.iteration)}"
        if is_integer(event.get("frame")):
            where = f"frame {event['frame']}, " + where
        state.message = f"Cancelled at {where}; Resume goes on from the checkpoint" if checkpoint else "Cancelled"
        state.resumable = bool(checkpoint)
    elif kind == protocol.DONE:
        outputs = event.get("outputs") or {}
        if outputs.get("mesh"):
            state.mesh_path = str(outputs["mesh"])
        if outputs.get("sequence"):
            state.sequence_path = str(outputs["sequence"])
            if is_integer(outputs.get("frames")):
                state.frames_done = outputs["frames"]
        state.progress = 1.0
        state.eta_s = 0.0


def ended(state, returncode, failure=None, cancel_requested=False, resumable=False, tail="", log_path=""):
    """The engine exited without a final event, or the add-on failed the job (`failure`): say how it
    ended. `tail`: the last lines of its log, shown when it failed on its own."""
    state.resumable = resumable
    if failure is not None:
        state.state = 'failed'
        state.message = failure
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
        state.message = how + (f"; last lines of {log_path}:\n{tail}" if tail else "")


def replay(state, job_dir):
    """Show the last state of the job in `job_dir` (absolute; "" for none), read back from its
    events.jsonl, when no engine runs for it. Returns False when there is no job to show."""
    events_path = os.path.join(job_dir, protocol.EVENTS_FILE) if job_dir else ""
    state.state = 'idle'
    state.progress = state.loss = state.psnr = state.eta_s = 0.0
    state.iteration = state.total = 0
    state.frame = state.frame_index = -1
    state.frame_count = state.frames_done = 0
    state.dynamic = False
    state.stage = state.message = state.device = state.mesh_path = state.phase = state.sequence_path = ""
    state.resumable = False
    state.job_dir = job_dir
    if not events_path or not os.path.isfile(events_path):
        if job_dir:
            state.message = f"The last job's folder is gone: {job_dir}"
        return False
    final = None
    for event in protocol.read_events(events_path):
        update_state(state, event)
        if event.get("event") in (protocol.ERROR, protocol.CANCELLED, protocol.DONE):
            final = event["event"]
        elif event.get("event") == protocol.STARTED:
            final = None  # a resumed run starts over in the same file
    if state.dynamic:
        # The frames finished so far are those sequence.json lists (a resumed run does not announce them again).
        path = state.sequence_path or sequence_io.sequence_path(job_dir)
        if os.path.isfile(path):
            state.sequence_path = path
            state.frames_done = sequence_io.count_frames(path)
    if final == protocol.DONE:
        state.state = 'done'
        if state.dynamic:
            state.message = (f"Finished: {state.frames_done} frames; sequence: {state.sequence_path}"
                             if state.sequence_path else "Finished")
        else:
            state.message = f"Finished; mesh: {state.mesh_path}" if state.mesh_path else "Finished"
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
    return True
