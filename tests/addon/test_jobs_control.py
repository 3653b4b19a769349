"""The artist's loop with the REAL engine under the bpy module (a tiny rig, a few iterations): progress
through the tick, the live preview updated in place, cancel then resume, a killed engine, a wrong
interpreter, and a reloaded .blend showing the job's last state."""
import os
import signal
import subprocess
import time

import bpy
import pytest

from conftest import make_rig, ring_cameras


@pytest.fixture
def studio(marble, tmp_path):
    """A scene with a tiny imported rig and the engine's real interpreter (checked by the doctor)."""
    from tools.env import venv_python

    rig_path = make_rig(tmp_path, ring_cameras(count=4, width=24, height=20, focal=30.0), name="tiny")
    assert bpy.ops.marble.import_rig(filepath=rig_path) == {'FINISHED'}
    marble.prefs.python = venv_python()  # starts `python -m engine doctor` in the background
    assert marble.preferences.wait_check(timeout=180) == 'ok', marble.prefs.engine_report
    assert marble.prefs.engine_ok, marble.prefs.engine_report
    marble.prefs.preview_every = 0
    settings = bpy.context.scene.marble
    settings.resolution = 16
    settings.job_dir = str(tmp_path / "job")
    marble.job_dir = str(tmp_path / "job")
    return marble


def tick_until(jobs, until, timeout=120.0, on_tick=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return
        if jobs.tick() is None and not until():
            raise AssertionError(f"the job ended first: {bpy.context.window_manager.marble_job.message}")
        if on_tick is not None:
            on_tick()
        time.sleep(0.02)
    raise AssertionError("timed out")


def run_to_end(jobs, timeout=180.0, on_tick=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if jobs.tick() is None:
            return
        if on_tick is not None:
            on_tick()
        time.sleep(0.02)
    raise AssertionError("the job did not end in time")


def test_progress_preview_in_place_and_result(studio, tmp_path):
    """Progress events reach wm.marble_job through the tick; the preview is one object whose mesh data
    is replaced; the final mesh lands with vertex colours; the curves open; the state survives a
    save and reload of the .blend."""
    jobs = studio.jobs
    studio.prefs.preview_every = 2
    bpy.context.scene.marble.iterations = 8
    assert bpy.ops.marble.train() == {'FINISHED'}
    state = bpy.context.window_manager.marble_job
    seen = {"iterations": set(), "preview_objects": set(), "preview_meshes": set(), "most_previews": 0}

    def watch():
        seen["iterations"].add(state.iteration)
        previews = [o for o in bpy.data.objects if o.name.endswith("preview")]
        seen["most_previews"] = max(seen["most_previews"], len(previews))
        for obj in previews:
            seen["preview_objects"].add(obj.as_pointer())
            seen["preview_meshes"].add(obj.data.name_full + str(obj.data.as_pointer()))

    run_to_end(jobs, on_tick=watch)
    assert state.state == 'done', state.message
    assert (state.iteration, state.total, state.progress) == (8, 8, 1.0)
    assert state.loss > 0 and state.psnr > 0 and state.stage == "extract" and state.device.startswith("cpu")
    assert len(seen["iterations"] - {0, 8}) >= 1  # intermediate progress was shown
    # One preview object at a time, the same object throughout, with its mesh data replaced.
    assert seen["most_previews"] == 1 and len(seen["preview_objects"]) == 1
    assert len(seen["preview_meshes"]) >= 2
    assert not any(o.name.endswith("preview") for o in bpy.data.objects)  # gone with the final mesh
    mesh = bpy.data.objects["tiny mesh"]
    assert "Color" in mesh.data.color_attributes and len(mesh.data.vertices) > 0
    assert mesh.name in bpy.data.collections["tiny"].objects

    assert bpy.ops.marble.show_curves() == {'FINISHED'}
    assert any(os.path.basename(i.filepath) == "curves.png" for i in bpy.data.images)

    # A reloaded file shows the job's last state, read back from its events.jsonl.
    blend = str(tmp_path / "scene.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    bpy.ops.wm.read_homefile(use_empty=True)
    state = bpy.context.window_manager.marble_job
    state.state, state.iteration = 'idle', 0
    bpy.ops.wm.open_mainfile(filepath=blend)
    state = bpy.context.window_manager.marble_job
    assert state.state == 'done' and (state.iteration, state.total) == (8, 8)
    assert state.mesh_path == os.path.join(studio.job_dir, "meshes", "mesh.ply")
    assert os.path.samefile(state.job_dir, studio.job_dir)


def test_cancel_then_resume_ends_with_a_mesh(studio, tmp_path):
    jobs = studio.jobs
    bpy.context.scene.marble.iterations = 100000
    assert bpy.ops.marble.train() == {'FINISHED'}
    state = bpy.context.window_manager.marble_job
    tick_until(jobs, lambda: state.iteration >= 2)
    assert bpy.ops.marble.resume.poll() is False  # not while it runs
    assert bpy.ops.marble.cancel() == {'FINISHED'}
    assert state.state == 'cancelling'
    run_to_end(jobs)
    assert state.state == 'cancelled' and state.resumable, state.message
    stopped = state.iteration
    assert "Resume" in state.message

    # A reload of the file shows the cancelled, resumable job.
    blend = str(tmp_path / "cancelled.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    bpy.ops.wm.open_mainfile(filepath=blend)
    state = bpy.context.window_manager.marble_job
    assert state.state == 'cancelled' and state.resumable and state.iteration == stopped

    bpy.context.scene.marble.iterations = stopped + 4  # resume may raise (or here, end) the total
    assert bpy.ops.marble.resume() == {'FINISHED'}
    assert state.state == 'running' and state.iteration == stopped
    run_to_end(jobs)
    assert state.state == 'done', state.message
    assert state.iteration == stopped + 4
    assert "tiny mesh" in bpy.data.objects
    with open(os.path.join(studio.job_dir, "engine.log"), encoding="utf-8") as f:
        assert f"resumed from" in f.read()


def test_engine_killed_mid_run_is_reported_as_failed(studio):
    jobs = studio.jobs
    bpy.context.scene.marble.iterations = 100000
    bpy.ops.marble.train()
    state = bpy.context.window_manager.marble_job
    tick_until(jobs, lambda: state.iteration >= 1)
    os.kill(jobs.current_job().process.pid, signal.SIGKILL)
    run_to_end(jobs)
    assert state.state == 'failed'
    assert "signal 9" in state.message and "killed" in state.message
    assert not any(o.type == 'MESH' for o in bpy.data.objects)  # nothing half-made
    assert not jobs.is_running()


def test_wrong_interpreters_are_reported(studio, tmp_path):
    missing = str(tmp_path / "no" / "python")
    studio.prefs.python = missing
    assert not studio.prefs.engine_ok and "Not found" in studio.prefs.engine_report
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.marble.train()
    assert not studio.jobs.is_running()

    # A Python without torch: the doctor says so, and training refuses to start with that message.
    bare = subprocess.run(["python3", "-c", "import sys; print(sys.executable)"], capture_output=True,
                          text=True).stdout.strip()
    has_torch = subprocess.run([bare, "-c", "import torch"], capture_output=True).returncode == 0
    if not bare or has_torch:
        pytest.skip("no Python without torch on this machine")
    studio.prefs.python = bare
    assert studio.preferences.wait_check(timeout=180) == 'failed'
    assert not studio.prefs.engine_ok and "torch" in studio.prefs.engine_report
    with pytest.raises(RuntimeError, match="torch"):
        bpy.ops.marble.train()
    assert not studio.jobs.is_running()


def test_one_job_at_a_time(studio):
    jobs = studio.jobs
    bpy.context.scene.marble.iterations = 100000
    bpy.ops.marble.train()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            bpy.ops.marble.train()
    finally:
        jobs.cancel()
        run_to_end(jobs)
    assert bpy.context.window_manager.marble_job.state == 'cancelled'
