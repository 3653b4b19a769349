# SPDX-License-Identifier: GPL-3.0-or-later
"""The job client: starts `python -m engine train` (or `calibrate`, for photographs; `export`, for a
finished job's textured mesh or USD sequence) in the engine's own Python and follows its events.

One job runs at a time, whatever its kind. `tick()` drains the reader thread's queue on Blender's main thread: the
reducer updates `wm.marble_job`, the effects change the scene. In Blender, `tick` runs as a
`bpy.app.timers` callback; the headless bpy module runs no timers, so tests and the demo call it in a
loop until it returns None.
"""
import atexit
import queue
import subprocess
import time
import traceback

import bpy

from .. import engine_python
from . import command as commands
from . import effects, reducer
from .process import EOF, EngineProcess, JobError, spawn

TICK_SECONDS = 0.2          # how often the timer drains events while a job runs
MAX_EVENTS_PER_TICK = 200   # keep one tick short even when the engine floods its output
CANCEL_GRACE_S = 30.0       # after a cancel request: wait this long, then SIGTERM, then as long again, SIGKILL
EXIT_GRACE_S = 5.0          # the engine exited, every event is handled, but something still holds its stdout open
RELEASE_TIMEOUT_S = 10.0    # a new job waits this long for the previous engine to exit after its final event


class Job(EngineProcess, effects.SceneTargets):
    """The running engine and where its results go in the scene."""

    def __init__(self, process, command, job_dir, log_path, log_offset, scene_name, collection_name,
                 region_name=None, resume=False, kind="train", source_name=""):
        EngineProcess.__init__(self, process, command, job_dir, log_path, log_offset)
        effects.SceneTargets.__init__(self, scene_name, collection_name, region_name, resume, kind, source_name)


_job = None


def is_running():
    """A job runs until its outcome is known: its final event (done, error, cancelled) was handled, or
    the engine exited. The state shows its final value at the same moment, so what the panel shows and
    what the operators allow (Train, Resume, Cancel) agree; an engine still exiting after its final
    event is released by the tick, or at once by the next start()."""
    return _job is not None and _job.final is None


def current_job():
    return _job


def _check_free(context):
    """Raise JobError when a job runs (one job at a time, training or calibration)."""
    if _job is not None and _job.final is not None:
        _release(_job)  # its outcome is shown already; only its process still exits
    if _job is not None:
        what = {"calibrate": "calibration", "export": "export"}.get(_job.kind, "training")
        where = f" (scene '{_job.scene_name}')" if _job.scene_name != context.scene.name else ""
        raise JobError(f"A Marble {what} job is already running{where}: wait for it or cancel it first; "
                       "one job runs at a time")


def _run(context, command, job_dir, **targets):
    """Spawn the engine for a planned job and follow it; returns the Job."""
    global _job
    root = engine_python.engine_root()
    process, log_path, log_offset = spawn(command, job_dir, engine_python.engine_environment(root))
    _job = Job(process, command, job_dir, log_path, log_offset, context.scene.name, **targets)
    _job.reader.start()
    context.scene.marble.last_job = job_dir
    timers = getattr(bpy.app, "timers", None)
    if timers is not None and not timers.is_registered(tick):
        timers.register(tick, first_interval=TICK_SECONDS, persistent=True)
    return _job


def start(context, resume=False):
    """Start training the scene's rig (or, with `resume`, go on with the scene's last job from its
    checkpoint); raises JobError with a message for the user when it cannot."""
    _check_free(context)
    plan = commands.plan(context, resume)
    settings = context.scene.marble
    collection = settings.rig_collection
    job = _run(context, plan.command, plan.job_dir, collection_name=collection.name if collection is not None else "",
               region_name=plan.region_name, resume=resume)
    reducer.begin(context.window_manager.marble_job, plan.job_dir, resume, settings.iterations)
    return job


def start_calibration(context, path):
    """Calibrate the photographs in the folder `path` (or the video file `path`) into a new job folder's
    dataset/ (`python -m engine calibrate`); at its done, its cameras, region and points are imported
    into one collection named after the folder (or the video), which becomes the scene's rig. Raises
    JobError with a message for the user when it cannot start."""
    _check_free(context)
    plan = commands.plan_calibration(context, path)
    job = _run(context, plan.command, plan.job_dir, collection_name="", kind="calibrate", source_name=plan.name)
    reducer.begin(context.window_manager.marble_job, plan.job_dir, False, 0, kind="calibrate")
    return job


def start_export(context, fmt):
    """Export the scene's last (finished) job as `fmt` (one of protocol.EXPORT_FORMATS; glb with the
    scene's Faces and Texture Size) in the background (`python -m engine export`); at its done the
    result is imported into the rig's collection: a glb as "<rig> textured" (build.textured), a USD
    sequence as a sequence cache. Raises JobError with a message for the user when it cannot start."""
    _check_free(context)
    plan = commands.plan_export(context, fmt)
    collection = context.scene.marble.rig_collection
    in_scene = collection is not None and collection in context.scene.collection.children_recursive
    job = _run(context, plan.command, plan.job_dir, collection_name=collection.name if in_scene else "",
               kind="export")
    reducer.begin(context.window_manager.marble_job, plan.job_dir, False, 0, kind="export")
    return job


def cancel():
    """Ask the running engine to stop (it saves a checkpoint first). False when no job runs."""
    job = _job
    if job is None or job.final is not None:
        return False
    if job.request_cancel(time.monotonic()):
        state = _state()
        if state is not None and job.final is None:
            state.state = 'cancelling'
            state.message = {"calibrate": "Stopping the calibration", "export": "Stopping the export"}.get(
                job.kind, "Stopping: the engine saves a checkpoint first")
        _redraw()
    return True


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
        job.kill()
        state = _state()
        if state is not None:
            state.state = 'failed'
            state.message = reducer.bounded(f"Marble's job client failed: {exc}")
        _clear(job)
        return None


def _handle_events(job, state, limit):
    """Handle up to `limit` queued events (None: all); True when any was handled."""
    changed, count = False, 0
    while limit is None or count < limit:
        try:
            item = job.events.get_nowait()
        except queue.Empty:
            break
        job.last_item_at = time.monotonic()
        if item is EOF:
            job.eof = True
            break
        changed, count = True, count + 1
        if effects.handle(job, item, state) and limit is not None:
            break  # it imported meshes: the next events wait for the next tick, so Blender stays responsive
    return changed


def _tick(job):
    state = _state()
    changed = _handle_events(job, state, MAX_EVENTS_PER_TICK)

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
    # Finished when every event is handled: the reader reached the end of stdout (EOF is queued after
    # the last event), or, when something else still holds stdout open, nothing came for EXIT_GRACE_S
    # after the engine exited and the queue is empty. Never while events wait: the final one may be among them.
    quiet_since = max(job.exited_at or now, job.last_item_at or 0.0)
    if returncode is not None and (job.eof or (job.events.empty() and now - quiet_since > EXIT_GRACE_S)):
        _finish(job, returncode, state)
        _redraw()
        return None
    if changed:
        _redraw()
    return TICK_SECONDS


def _finish(job, returncode, state):
    effects.remove_preview(job)
    if state is not None and (job.failure is not None or job.final is None):
        cancel_requested = job.cancel_requested_at is not None
        own_failure = job.failure is None and not cancel_requested
        reducer.ended(state, returncode, failure=job.failure, cancel_requested=cancel_requested,
                      resumable=job.kind != "export" and reducer.has_checkpoint(job.job_dir),
                      tail=job.log_tail() if own_failure else "", log_path=job.log_path)
    _clear(job)


def _release(job, timeout=RELEASE_TIMEOUT_S):
    """Release a job whose final event was handled but whose engine has not exited yet (start() of the
    next job): wait for it to exit (SIGTERM, then SIGKILL when it lingers), handle what it still sent."""
    try:
        job.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.stop(timeout)
    job.reader.join(timeout=1.0)
    state = _state()
    _handle_events(job, state, None)
    returncode = job.process.poll()
    _finish(job, -9 if returncode is None else returncode, state)


def _clear(job):
    global _job
    job.close()
    if _job is job:
        _job = None


def restore_state(scene, state):
    """Show the last state of `scene`'s last job, read back from its events.jsonl (after a file load,
    when no engine runs for it). Returns False when the scene has no job to show."""
    return reducer.replay(state, commands.last_job_dir(scene))


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
    job.stop(timeout)
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
        try:
            restore_state(scene, state)
        except Exception as exc:  # a damaged job folder must not break loading the file
            traceback.print_exc()
            state.state = 'idle'
            state.message = reducer.bounded(f"The last job's state cannot be shown: {exc}")


def register():
    atexit.register(shutdown)  # Blender quitting must not leave an orphaned engine training
    if _on_load not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_on_load)


def unregister():
    if _on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load)
    shutdown()
    atexit.unregister(shutdown)
