# SPDX-License-Identifier: GPL-3.0-or-later
"""The job client: runs `python -m engine train` in the engine's own Python and follows its events.

A reader thread moves decoded stdout events onto a queue and touches nothing else. `tick()` drains
the queue on Blender's main thread, updates `wm.marble_job`, and imports the mesh when the engine is
done. In Blender, `tick` runs as a `bpy.app.timers` callback; the headless bpy module runs no timers,
so tests and the demo call it in a loop until it returns None.

A dynamic job (its `started` event says "dynamic") grows one collection of per-frame objects as its
frames finish: each `mesh` event with a frame adds that frame's object (addon.sequence.LiveSequence),
a resumed job first adds the frames its sequence.json already lists, and `done` makes the collection
hold exactly the frames of sequence.json. A frame that cannot be imported fails the job and stops
the engine (it saves a checkpoint, as on cancel).
"""
import atexit
import collections
import os
import queue
import subprocess
import threading
import time
import traceback

import bpy

from ..engine.io import protocol
from ..engine.io import sequence as sequence_io
from . import ROOT, preferences
from . import region as regions
from . import scene as builders
from . import sequence as sequences

TICK_SECONDS = 0.2          # how often the timer drains events while a job runs
MAX_EVENTS_PER_TICK = 200   # keep one tick short even when the engine floods its output
CANCEL_GRACE_S = 30.0       # after a cancel request: wait this long, then SIGTERM, then as long again, SIGKILL
EXIT_GRACE_S = 5.0          # the engine exited but something still holds its stdout open
LOG_TAIL_LINES = 12
PHASES = {"predict": "predicting its motion", "train": "training"}  # a dynamic job's phases within a frame

_EOF = object()             # put on the queue by the reader thread when stdout closes


class JobError(Exception):
    """A job that cannot start; the message tells the user what to do."""


class Job:
    def __init__(self, process, command, job_dir, log_path, log_offset, scene_name, collection_name, resume=False):
        self.process = process
        self.command = command
        self.job_dir = job_dir
        self.log_path = log_path
        self.log_offset = log_offset          # where this run's output starts in engine.log
        self.scene_name = scene_name
        self.collection_name = collection_name
        self.events = queue.Queue()
        self.stray_lines = collections.deque(maxlen=LOG_TAIL_LINES)  # stdout lines that are no events
        self.final = None                     # kind of the final event once it arrived
        self.final_at = None
        self.eof = False
        self.exited_at = None
        self.cancel_requested_at = None
        self.terminated_at = None
        self.preview_name = None
        self.region_name = None               # an automatic region empty that follows the engine's region
        self.resume = resume                  # a resumed job goes on with the frames already finished
        self.dynamic = False                  # set by the started event
        self.coordinates = "world"            # a dynamic job's mesh coordinates (started event)
        self.sequence = None                  # a dynamic job's sequence.LiveSequence, made by its first frame
        self.failure = None                   # why the add-on failed the job (a frame it cannot import)
        self.reader = threading.Thread(target=_read_events, args=(process.stdout, self.events, self.stray_lines),
                                       name="marble-engine-reader", daemon=True)


_job = None


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
        events.put(_EOF)


def engine_root():
    """The folder that holds the `engine` package (the extension's root); tests point it elsewhere."""
    return ROOT


def is_running():
    return _job is not None


def current_job():
    return _job


def engine_environment(root):
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)  # Blender's own Python home must not leak into the engine's Python
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"  # events must arrive as they happen, not when a buffer fills
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def resolved_choice(value, preference_name, fallback):
    """A scene's preset/device, where 'default' means the preferences' default."""
    if value != 'default':
        return value
    prefs = preferences.get()
    return getattr(prefs, preference_name, fallback) if prefs is not None else fallback


def build_command(python, settings, rig_path, job_dir, region=None, resume=False, preview_every=0):
    """The engine's command line; `region` (centre xyz, radius) in world units adds `--region X Y Z R`."""
    command = [python, "-m", "engine", "train", "--data", rig_path, "--out", job_dir,
               "--preset", resolved_choice(settings.preset, "default_preset", "cpu"),
               "--device", resolved_choice(settings.device, "default_device", "auto"),
               "--resolution", str(settings.resolution)]
    if settings.iterations > 0:
        command += ["--iterations", str(settings.iterations)]
    if preview_every > 0:
        command += ["--preview-every", str(preview_every)]
    if not settings.use_masks:
        command += ["--no-masks"]
    if region is not None:
        centre, radius = region
        command += ["--region", *(_fixed(x) for x in (*centre, radius))]
    if resume:
        command += ["--resume"]
    return command


def _fixed(value):
    # Fixed-point, never an exponent: argparse takes "-1e-05" for an option, not a negative number.
    text = f"{float(value):.9f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def new_job_dir():
    """A fresh timestamped folder under the jobs folder of the preferences."""
    base = preferences.jobs_root()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = os.path.join(base, stamp), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(base, f"{stamp}-{n}")
    os.makedirs(path)
    return path


def start(context, resume=False):
    """Start training the scene's rig (or, with `resume`, go on with the scene's last job from its
    checkpoint); raises JobError with a message for the user when it cannot."""
    global _job
    if _job is not None:
        where = f" (scene '{_job.scene_name}')" if _job.scene_name != context.scene.name else ""
        raise JobError(f"A Marble job is already running{where}: wait for it or cancel it first; "
                       "one job runs at a time")
    settings = context.scene.marble
    if not settings.rig_path:
        raise JobError("No camera rig: import one first (Marble > Import Rig)")
    rig_path = os.path.abspath(bpy.path.abspath(settings.rig_path))
    if not os.path.exists(rig_path):
        raise JobError(f"The rig file does not exist any more: {rig_path}")
    python = preferences.python_path()
    if not python:
        raise JobError("No Python interpreter for the engine: set one that has torch installed in "
                       "Preferences > Add-ons > Marble")
    if not os.path.isfile(python):
        raise JobError(f"The engine's Python interpreter does not exist: {python} "
                       f"(set it in Preferences > Add-ons > Marble)")
    if not os.access(python, os.X_OK):
        raise JobError(f"The engine's Python interpreter is not executable: {python}")
    verdict = preferences.engine_verdict()
    if verdict is not None and not verdict[0]:
        raise JobError(f"The engine's Python cannot train: {verdict[1]} "
                       "(Preferences > Add-ons > Marble)")

    if resume:
        job_dir = resumable_job(context.scene)
        if job_dir is None:
            raise JobError("Nothing to resume: the scene's last job has no checkpoint")
    elif settings.job_dir:
        job_dir = os.path.abspath(bpy.path.abspath(settings.job_dir))
    else:
        job_dir = new_job_dir()
    try:
        os.makedirs(job_dir, exist_ok=True)
    except OSError as exc:
        raise JobError(f"Cannot create the job folder {job_dir}: {exc.strerror}") from None
    # The region empty: passed on when the user (or the rig) chose it; an automatic, untouched one is
    # left to the engine, and follows the region the engine reports.
    region_obj = regions.scene_region(context.scene)
    region = regions.training_region(context.scene)
    prefs = preferences.get()
    command = build_command(python, settings, rig_path, job_dir, region=region, resume=resume,
                            preview_every=prefs.preview_every if prefs is not None else 0)
    root = engine_root()
    log_path = os.path.join(job_dir, protocol.LOG_FILE)
    try:
        log = open(log_path, "ab")  # appended: a resumed job keeps the earlier runs' log
    except OSError as exc:
        raise JobError(f"Cannot write {log_path}: {exc.strerror}") from None
    try:
        log_offset = log.tell()
        # cwd is the job folder, so the engine writes nothing stray into the installed extension.
        process = subprocess.Popen(
            command, cwd=job_dir, env=engine_environment(root),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            text=True, encoding="utf-8", errors="replace", bufsize=1,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except OSError as exc:
        raise JobError(f"Cannot start the engine with {python}: {exc.strerror or exc}") from None
    finally:
        log.close()  # the child holds its own handle

    collection = settings.rig_collection
    _job = Job(process, command, job_dir, log_path, log_offset, context.scene.name,
               collection.name if collection is not None else "", resume=resume)
    if region_obj is not None and region is None:
        _job.region_name = region_obj.name
    _job.reader.start()

    settings.last_job = job_dir
    state = context.window_manager.marble_job
    if not resume:  # a resumed job keeps showing where it stopped until the engine reports
        state.progress = 0.0
        state.iteration = 0
        state.total = settings.iterations
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

    timers = getattr(bpy.app, "timers", None)
    if timers is not None and not timers.is_registered(tick):
        timers.register(tick, first_interval=TICK_SECONDS, persistent=True)
    return _job


def cancel():
    """Ask the running engine to stop (it saves a checkpoint first). False when no job runs."""
    job = _job
    if job is None:
        return False
    if job.cancel_requested_at is None:
        job.cancel_requested_at = time.monotonic()
        _send_cancel(job)
        state = _state()
        if state is not None and job.final is None:
            state.state = 'cancelling'
            state.message = "Stopping: the engine saves a checkpoint first"
        _redraw()
    return True


def _send_cancel(job):
    try:
        job.process.stdin.write(protocol.CANCEL_LINE + "\n")
        job.process.stdin.flush()
    except (OSError, ValueError):
        pass  # it already exited (or closed stdin); tick() will see that


def tick():
    """Drain engine events on the main thread. Returns seconds until the next call, None when idle."""
    job = _job
    if job is None:
        return None
    try:
        return _tick(job)
    except Exception as exc:
        # A bug here must not leave the engine running with nobody listening.
        traceback.print_exc()
        _kill(job)
        state = _state()
        if state is not None:
            state.state = 'failed'
            state.message = f"Marble's job client failed: {exc}"
        _clear(job)
        return None


def _tick(job):
    state = _state()
    changed = False
    for _ in range(MAX_EVENTS_PER_TICK):
        try:
            item = job.events.get_nowait()
        except queue.Empty:
            break
        if item is _EOF:
            job.eof = True
            break
        changed = True
        if _handle(job, item, state):
            break  # it imported meshes: the next events wait for the next tick, so Blender stays responsive

    now = time.monotonic()
    if job.final is not None and job.final_at is None:
        job.final_at = now
    returncode = job.process.poll()
    # Escalate when the engine does not stop: after a cancel request, or lingering after its final event.
    waiting_since = job.final_at if job.final is not None else job.cancel_requested_at
    if returncode is None and waiting_since is not None:
        if job.terminated_at is None and now - waiting_since > CANCEL_GRACE_S:
            job.terminated_at = now
            job.process.terminate()  # the engine treats SIGTERM as cancel too
        elif job.terminated_at is not None and now - job.terminated_at > CANCEL_GRACE_S:
            job.process.kill()
    if returncode is not None and job.exited_at is None:
        job.exited_at = now
    if returncode is not None and (job.eof or now - job.exited_at > EXIT_GRACE_S):
        _finish(job, returncode, state)
        _redraw()
        return None
    if changed:
        _redraw()
    return TICK_SECONDS


def _number(value, default=0.0):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def update_state(state, event):
    """Copy what one engine event says into the job state (figures and messages only, no scene
    changes): shared by the live tick and by restoring a job's state from its events.jsonl."""
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
        if name in ("frame", "predict") and _integer(event.get("frame")):
            state.frame = event["frame"]
        if name == "frame":
            state.phase = ""
            if _integer(event.get("index")):
                state.frame_index = event["index"]
            if _integer(event.get("count")):
                state.frame_count = event["count"]
        elif name == "predict":
            state.phase = "predict"
    elif kind == protocol.PROGRESS:
        iteration, total = int(_number(event.get("iteration"))), int(_number(event.get("total")))
        state.iteration = iteration
        if total > 0:
            state.total = total
        overall = event.get("sequence_progress")
        if _integer(overall) or isinstance(overall, float):  # a dynamic job: the bar covers every frame
            state.progress = min(1.0, max(0.0, float(overall)))
        elif total > 0:
            state.progress = min(1.0, max(0.0, iteration / total))
        state.loss = _number(event.get("loss"), state.loss)
        state.psnr = _number(event.get("psnr"), state.psnr)
        state.eta_s = _number(event.get("eta_s"), state.eta_s)
        frame = event.get("frame")
        state.frame = frame if _integer(frame) else -1
        if _integer(event.get("frame_index")):
            state.frame_index = event["frame_index"]
        if _integer(event.get("frame_count")):
            state.frame_count = event["frame_count"]
        if event.get("phase") in PHASES:
            state.phase = event["phase"]
    elif kind == protocol.MESH:
        if event.get("frame") is None and event.get("path"):
            state.mesh_path = str(event["path"])
        if _integer(event.get("frame")) and event.get("sequence"):
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
        if _integer(event.get("frame")):
            where = f"frame {event['frame']}, " + where
        state.message = f"Cancelled at {where}; Resume goes on from the checkpoint" if checkpoint else "Cancelled"
        state.resumable = bool(checkpoint)
    elif kind == protocol.DONE:
        outputs = event.get("outputs") or {}
        if outputs.get("mesh"):
            state.mesh_path = str(outputs["mesh"])
        if outputs.get("sequence"):
            state.sequence_path = str(outputs["sequence"])
            if _integer(outputs.get("frames")):
                state.frames_done = outputs["frames"]
        state.progress = 1.0
        state.eta_s = 0.0


def _handle(job, event, state):
    """Act on one event on the main thread. Returns True when it imported meshes (a slow event)."""
    kind = event["event"]
    if state is None:
        return False
    if job.failure is not None:
        # The add-on already failed this job and asked the engine to stop: only its end still counts.
        if kind in protocol.FINAL_EVENTS:
            job.final = kind
            state.resumable = has_checkpoint(job.job_dir)
        return False
    if kind in (protocol.ERROR, protocol.CANCELLED, protocol.DONE):
        job.final = kind
    update_state(state, event)
    if kind == protocol.STARTED:
        job.dynamic = bool(event.get("dynamic"))
        if event.get("coordinates") in sequence_io.COORDINATES:
            job.coordinates = event["coordinates"]
        if job.dynamic and job.resume:
            return _show_finished_frames(job, state)
    elif kind == protocol.STAGE and event.get("name") == "train" and isinstance(event.get("region"), dict):
        _follow_region(job, event["region"])
    elif kind == protocol.PREVIEW:
        _show_preview(job, event.get("path"))
    elif kind == protocol.MESH and _integer(event.get("frame")):
        return _add_frame(job, event, state)
    elif kind == protocol.ERROR:
        state.resumable = has_checkpoint(job.job_dir)
    elif kind == protocol.DONE:
        _remove_preview(job)
        outputs = event.get("outputs") or {}
        if job.dynamic or outputs.get("sequence"):
            return _finish_sequence(job, state, outputs)
        mesh_path = state.mesh_path or os.path.join(job.job_dir, protocol.MESHES_DIR, protocol.STATIC_MESH_FILE)
        state.mesh_path = mesh_path
        try:
            obj = builders.build_mesh(mesh_path, _target_collection(job), name=_mesh_name(job))
        except (builders.MeshError, OSError) as exc:
            state.state = 'failed'
            state.message = f"The engine finished but its mesh cannot be imported: {exc}"
        else:
            builders.show_color_attributes(bpy.context.window_manager)
            state.state = 'done'
            state.message = f"Imported '{obj.name}' ({len(obj.data.vertices)} vertices)"
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Dynamic jobs: the sequence grows in the scene frame by frame

def _scene(job):
    return bpy.data.scenes.get(job.scene_name) or bpy.context.scene


def _sequence_name(job):
    return f"{job.collection_name} sequence" if job.collection_name else "Marble sequence"


def _live_sequence(job, path, coordinates):
    """The job's sequence collection: the one it made, else (resuming) the one an earlier run of the job
    made in the scene, else a new one where the static job's mesh would go."""
    if job.sequence is not None and job.sequence.collection is not None:
        return job.sequence
    scene = _scene(job)
    live = sequences.LiveSequence.find(job.job_dir, scene) if job.resume else None
    if live is None:
        live = sequences.LiveSequence.create(_sequence_name(job), _target_collection(job), path, coordinates,
                                             job.job_dir, scene)
    job.sequence = live
    return live


def _add_frame(job, event, state):
    """A finished frame's mesh event: its object joins the job's sequence collection."""
    frame = event["frame"]
    try:
        coordinates, entry = sequence_io.entry_from_event(event, job.coordinates)
        arrays = sequence_io.read_frame_mesh(entry)  # before anything is made: a bad file changes nothing
        live = _live_sequence(job, event.get("sequence") or sequence_io.sequence_path(job.job_dir), coordinates)
        first = not live.frames()
        obj = live.add(entry, _scene(job), arrays, canonical=coordinates == "canonical")
    except (ValueError, OSError) as exc:  # SequenceError and MeshError are ValueErrors
        _fail(job, state, f"Frame {frame}'s mesh cannot be imported: {exc}")
        return True
    if first:
        builders.show_color_attributes(bpy.context.window_manager)
    count = len(live.frames())
    state.frames_done = count
    state.message = (f"Frame {frame}: '{obj.name}' ({len(obj.data.vertices)} vertices); "
                     f"{count} frame{'s' if count != 1 else ''} in '{live.name}'")
    return True


def _show_finished_frames(job, state):
    """A resumed dynamic job: the engine does not send the frames it finished before again, so they come
    from its sequence.json (those the scene lacks; e.g. the job was resumed in a new Blender session)."""
    path = sequence_io.sequence_path(job.job_dir)
    if not os.path.isfile(path):
        return False
    try:
        sequence = sequence_io.read_sequence(path)
        live = _live_sequence(job, path, sequence.coordinates)
        live.sync(sequence, _scene(job))
    except (ValueError, OSError) as exc:
        _fail(job, state, f"The frames this job finished before cannot be imported: {exc}")
        return True
    state.sequence_path = path
    state.frames_done = len(live.frames())
    return True


def _finish_sequence(job, state, outputs):
    """A dynamic job's done: the collection holds exactly the frames of its sequence.json."""
    path = str(outputs.get("sequence") or sequence_io.sequence_path(job.job_dir))
    try:
        sequence = sequence_io.read_sequence(path)
        live = _live_sequence(job, path, sequence.coordinates)
        live.sync(sequence, _scene(job), remove_missing=True)
    except (ValueError, OSError) as exc:
        state.state = 'failed'
        state.message = f"The engine finished but its sequence cannot be imported: {exc}"
        return True
    builders.show_color_attributes(bpy.context.window_manager)
    frames = live.frames()
    state.state = 'done'
    state.sequence_path = sequence.path
    state.frames_done = len(frames)
    state.message = (f"Imported {len(frames)} frame{'s' if len(frames) != 1 else ''} ({frames[0]} to "
                     f"{frames[-1]}) into '{live.name}'")
    return True


def _fail(job, state, message):
    """The add-on cannot go on with this job: show why and stop the engine (it saves a checkpoint)."""
    job.failure = message
    state.state = 'failed'
    state.message = message
    if job.final is None and job.cancel_requested_at is None:
        job.cancel_requested_at = time.monotonic()
        _send_cancel(job)


def shown_job_dir(context):
    """The job the panel shows (this session's, else the scene's last one), absolute; "" when none."""
    job_dir = context.window_manager.marble_job.job_dir or context.scene.marble.last_job
    return os.path.abspath(bpy.path.abspath(job_dir)) if job_dir else ""


def has_checkpoint(job_dir):
    folder = os.path.join(job_dir, protocol.CHECKPOINTS_DIR) if job_dir else ""
    return bool(folder) and os.path.isdir(folder) and any(n.endswith(".pt") for n in os.listdir(folder))


def resumable_job(scene):
    """The scene's last job folder when it can be resumed (its configuration and a checkpoint are there)."""
    last = scene.marble.last_job
    if not last:
        return None
    job_dir = os.path.abspath(bpy.path.abspath(last))
    if os.path.isfile(os.path.join(job_dir, protocol.CONFIG_FILE)) and has_checkpoint(job_dir):
        return job_dir
    return None


def restore_state(scene, state):
    """Show the last state of `scene`'s last job, read back from its events.jsonl (after a file load,
    when no engine runs for it). Returns False when the scene has no job to show."""
    last = scene.marble.last_job
    job_dir = os.path.abspath(bpy.path.abspath(last)) if last else ""
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
    events = protocol.read_events(events_path)
    final = None
    for event in events:
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


def frame_position(state, template="{} of {}"):
    """`template` filled with the trained frame's 1-based position and the job's frame count; "" when
    they are not known."""
    if state.frame_index < 0 or state.frame_count <= 0:
        return ""
    return template.format(state.frame_index + 1, state.frame_count)


def _follow_region(job, reported):
    """Show the region the engine actually uses on the automatic region empty (unless moved meanwhile)."""
    obj = bpy.data.objects.get(job.region_name) if job.region_name else None
    if obj is None or not regions.is_auto(obj) or not regions.is_untouched(obj):
        return
    try:
        centre = [float(x) for x in reported.get("center")]
        radius = float(reported.get("radius"))
    except (TypeError, ValueError):
        return
    if len(centre) == 3:
        regions.follow(obj, centre, radius)


def _target_collection(job):
    # Looked up by name: ID pointers kept across ticks would dangle after a file load.
    collection = bpy.data.collections.get(job.collection_name) if job.collection_name else None
    if collection is not None:
        return collection
    scene = bpy.data.scenes.get(job.scene_name) or bpy.context.scene
    return scene.collection


def _mesh_name(job):
    return f"{job.collection_name} mesh" if job.collection_name else "Marble mesh"


def _show_preview(job, path):
    """Show the coarse mesh the engine just wrote on the one preview object: the first preview makes
    it, later ones replace its mesh data in place."""
    if not path or not str(path).lower().endswith(".ply"):
        return
    obj = bpy.data.objects.get(job.preview_name) if job.preview_name else None
    try:
        if obj is not None:
            builders.replace_mesh(obj, path)
        else:
            obj = builders.build_mesh(path, _target_collection(job), name=f"{_mesh_name(job)} preview")
            obj.display_type = 'SOLID'
            job.preview_name = obj.name
    except (builders.MeshError, OSError):
        return  # a preview is a nicety; the final mesh still arrives


def _remove_preview(job):
    obj = bpy.data.objects.get(job.preview_name) if job.preview_name else None
    job.preview_name = None
    if obj is not None:
        mesh = obj.data
        bpy.data.objects.remove(obj)
        if mesh is not None and mesh.users == 0:
            bpy.data.meshes.remove(mesh)


def _finish(job, returncode, state):
    _remove_preview(job)
    if state is not None and job.failure is not None:
        state.state = 'failed'
        state.message = job.failure
        state.resumable = has_checkpoint(job.job_dir)
    elif state is not None and job.final is None:
        state.resumable = has_checkpoint(job.job_dir)
        if job.cancel_requested_at is not None:
            state.state = 'cancelled'
            state.message = f"The engine stopped (exit code {returncode}) before confirming the cancel"
        else:
            tail = log_tail(job)
            state.state = 'failed'
            if returncode < 0:
                how = (f"The engine was stopped by signal {-returncode} (killed from outside, or the system ran "
                       "out of memory: try the cpu preset or a lower mesh resolution)")
            else:
                how = f"The engine exited with code {returncode} without finishing"
            if state.resumable:
                how += "; Resume goes on from its last checkpoint"
            state.message = how + (f"; last lines of {job.log_path}:\n{tail}" if tail else "")
    _clear(job)


def _clear(job):
    global _job
    for stream in (job.process.stdin, job.process.stdout):
        try:
            stream.close()
        except (OSError, ValueError):
            pass
    if _job is job:
        _job = None


def log_tail(job, lines=LOG_TAIL_LINES):
    """The last lines this run wrote to engine.log (plus stray stdout), for a failure message."""
    text = ""
    try:
        with open(job.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(job.log_offset, size - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        pass
    tail = [line for line in text.splitlines() if line.strip()] + list(job.stray_lines)
    return "\n".join(tail[-lines:])


def _state():
    wm = getattr(bpy.context, "window_manager", None)
    return getattr(wm, "marble_job", None) if wm is not None else None


def _redraw():
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        screen = window.screen
        if screen is None:
            continue
        for area in screen.areas:
            if area.type == 'VIEW_3D':
                area.tag_redraw()


def _kill(job):
    if job.process.poll() is None:
        job.process.kill()
        try:
            job.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def shutdown(timeout=5.0):
    """Stop a running engine without touching Blender data (unregister, Blender quitting).

    SIGTERM lets the engine save a checkpoint as on cancel; it is killed if it does not stop in time.
    """
    try:
        timers = getattr(bpy.app, "timers", None)
        if timers is not None and timers.is_registered(tick):
            timers.unregister(tick)
    except Exception:
        pass  # Blender may already be tearing down at exit
    job = _job
    if job is None:
        return
    if job.process.poll() is None:
        job.process.terminate()
        try:
            job.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(job)
    _clear(job)


@bpy.app.handlers.persistent
def _on_load(_filepath=None):
    """After a file load: show the state of the loaded scene's last job (unless a job runs now, whose
    state the tick keeps)."""
    if _job is not None:
        return
    state = _state()
    scene = getattr(bpy.context, "scene", None)
    if state is not None and scene is not None and hasattr(scene, "marble"):
        restore_state(scene, state)


def register():
    atexit.register(shutdown)  # Blender quitting must not leave an orphaned engine training
    if _on_load not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_on_load)


def unregister():
    if _on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load)
    shutdown()
    atexit.unregister(shutdown)
