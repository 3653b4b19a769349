"""The job client against a real subprocess: a stand-in `engine` package (stand_in_engine.py, in a
temporary folder that the add-on is pointed at) speaks the event protocol over real pipes, so
marble.train, tick(), marble.cancel and the failure paths run as they do with the real engine, only in
milliseconds. (The real engine end to end is tests/demo/test_end_to_end.py.)"""
import json
import os
import sys

import bpy
import pytest

from addon_conftest import run_ticks

def train(monkeypatch, mode):
    """marble.train with the stand-in engine in `mode`; returns the job state."""
    monkeypatch.setenv("MARBLE_FAKE_MODE", mode)
    bpy.ops.marble.train()
    return bpy.context.window_manager.marble_job


def test_train_runs_to_done_and_imports_mesh(fake_engine, monkeypatch):
    jobs = fake_engine.jobs
    bpy.context.scene.marble.iterations = 4
    assert jobs.tick() is None  # nothing runs yet
    assert bpy.ops.marble.train() == {'FINISHED'}
    state = bpy.context.window_manager.marble_job
    assert jobs.is_running() and state.state == 'running' and state.job_dir == fake_engine.job_dir
    assert jobs.tick() == pytest.approx(0.2)
    run_ticks(jobs)
    assert not jobs.is_running()

    assert state.state == 'done', state.message
    assert (state.iteration, state.total, state.progress) == (4, 4, 1.0)
    assert state.loss == pytest.approx(0.25) and state.psnr == pytest.approx(24.0)
    assert state.eta_s == 0.0 and state.stage == "extract" and state.device == "cpu, fake"
    mesh_path = os.path.join(fake_engine.job_dir, "meshes", "mesh.ply")
    assert state.mesh_path == mesh_path
    # The mesh landed in the rig's collection with its colours.
    meshes = [o for o in bpy.data.collections["fakerig"].objects if o.type == 'MESH']
    assert [o.name for o in meshes] == ["fakerig mesh"]
    assert len(meshes[0].data.vertices) == 12 and len(meshes[0].data.polygons) == 20
    assert "Color" in meshes[0].data.color_attributes
    assert "Imported 'fakerig mesh'" in state.message
    # Solid shading in the 3D viewports shows the colour attribute, as Material Preview does.
    spaces = [s for w in bpy.context.window_manager.windows for a in w.screen.areas for s in a.spaces
              if s.type == 'VIEW_3D']
    assert all(s.shading.color_type == 'VERTEX' for s in spaces)

    with open(os.path.join(fake_engine.job_dir, "argv.json")) as f:
        recorded = json.load(f)
    argv = recorded["argv"]
    assert argv[:1] == ["train"]
    assert argv[argv.index("--data") + 1] == fake_engine.rig_path
    assert argv[argv.index("--out") + 1] == fake_engine.job_dir
    assert argv[argv.index("--preset") + 1] == "cpu"
    assert argv[argv.index("--iterations") + 1] == "4"
    assert argv[argv.index("--resolution") + 1] == "256"
    assert argv[argv.index("--device") + 1] == "auto"
    assert os.path.samefile(recorded["cwd"], fake_engine.job_dir)
    # stderr went to the job's engine.log.
    with open(os.path.join(fake_engine.job_dir, "engine.log")) as f:
        assert "fake engine: starting" in f.read()


def test_cancel_sends_cancel_line(fake_engine, monkeypatch):
    jobs = fake_engine.jobs
    state = train(monkeypatch, "wait")
    # Progress reaches the window manager while the engine is still running.
    run_ticks(jobs, until=lambda: state.iteration == 4 and jobs.current_job().preview_name)
    assert jobs.is_running() and state.state == 'running'
    assert state.progress == pytest.approx(1.0) and state.eta_s == 0.0
    preview = bpy.data.objects[jobs.current_job().preview_name]
    assert preview.name in bpy.data.collections["fakerig"].objects and len(preview.data.polygons) == 16

    with pytest.raises(RuntimeError, match="already running"):
        bpy.ops.marble.train()
    assert bpy.ops.marble.cancel() == {'FINISHED'}
    assert state.state == 'cancelling'
    run_ticks(jobs)
    assert state.state == 'cancelled', state.message
    assert "checkpoint" in state.message
    with open(os.path.join(fake_engine.job_dir, "stdin.txt")) as f:
        assert f.read() == "cancel\n"
    assert not any(o.type == 'MESH' for o in bpy.data.objects)  # the preview went away
    assert bpy.ops.marble.cancel() == {'CANCELLED'}  # nothing left to cancel


def test_engine_dying_without_final_event_fails(fake_engine, monkeypatch):
    state = train(monkeypatch, "die")
    run_ticks(fake_engine.jobs)
    assert state.state == 'failed'
    assert "exit" in state.message and "code 1" in state.message
    assert "fake engine crashed on purpose" in state.message  # the tail of engine.log
    assert state.iteration == 4
    assert not any(o.type == 'MESH' for o in bpy.data.objects)


def test_engine_error_event_fails_with_its_message(fake_engine, monkeypatch):
    state = train(monkeypatch, "error")
    run_ticks(fake_engine.jobs)
    assert state.state == 'failed'
    assert state.message == f"{fake_engine.rig_path}: no usable views (fake)"


def test_process_killed_from_outside_fails(fake_engine, monkeypatch):
    jobs = fake_engine.jobs
    state = train(monkeypatch, "wait")
    run_ticks(jobs, until=lambda: state.iteration == 4)
    jobs.current_job().process.kill()
    run_ticks(jobs)
    assert state.state == 'failed' and "stopped by signal 9" in state.message


def test_cancel_escalates_to_kill(fake_engine, monkeypatch):
    jobs = fake_engine.jobs
    monkeypatch.setattr(jobs.client, "CANCEL_GRACE_S", 0.3)
    state = train(monkeypatch, "stubborn")
    run_ticks(jobs, until=lambda: state.iteration == 4)
    process = jobs.current_job().process
    bpy.ops.marble.cancel()
    run_ticks(jobs, timeout=10.0)
    assert process.returncode == -9  # SIGTERM was ignored, so it was killed
    assert state.state == 'cancelled' and "before confirming" in state.message


def test_disabling_the_extension_stops_the_engine(fake_engine, monkeypatch):
    jobs = fake_engine.jobs
    state = train(monkeypatch, "wait")
    run_ticks(jobs, until=lambda: state.iteration == 4)
    process = jobs.current_job().process
    bpy.ops.preferences.addon_disable(module=fake_engine.package)
    try:
        assert process.poll() is not None  # unregister() did not leave the engine running
        assert not jobs.is_running()
    finally:
        bpy.ops.preferences.addon_enable(module=fake_engine.package)


def test_missing_interpreter_is_reported(fake_engine, tmp_path):
    fake_engine.prefs.python = str(tmp_path / "no" / "python")
    with pytest.raises(RuntimeError, match="interpreter does not exist"):
        bpy.ops.marble.train()
    assert not fake_engine.jobs.is_running()
    assert bpy.context.window_manager.marble_job.state == 'idle'


def test_train_without_rig_is_reported(marble):
    marble.prefs.python = sys.executable
    with pytest.raises(RuntimeError, match="No camera rig"):
        bpy.ops.marble.train()
    assert not marble.jobs.is_running()


def test_new_job_folder_under_extension_user_path(fake_engine):
    bpy.context.scene.marble.job_dir = ""
    bpy.ops.marble.train()
    job_dir = bpy.context.window_manager.marble_job.job_dir
    expected = bpy.utils.extension_path_user(fake_engine.package, path="jobs")
    assert os.path.dirname(job_dir) == expected and os.path.isdir(job_dir)
    assert os.environ["BLENDER_USER_RESOURCES"] in job_dir  # inside the sandbox
    run_ticks(fake_engine.jobs)
    assert bpy.context.window_manager.marble_job.state == 'done'


def test_preferences_choose_job_folder_defaults_and_preview(fake_engine, tmp_path):
    """The preferences' job folder (never inside the extension), default preset and device, and the
    preview interval reach the engine's command line; Use Masks off passes --no-masks."""
    prefs, settings = fake_engine.prefs, bpy.context.scene.marble
    settings.job_dir = ""
    prefs.job_root = str(tmp_path / "my jobs")
    prefs.default_preset, prefs.default_device, prefs.preview_every = 'fast', 'cpu', 25
    settings.use_masks = False
    try:
        bpy.ops.marble.train()
        job_dir = bpy.context.window_manager.marble_job.job_dir
        assert os.path.dirname(job_dir) == str(tmp_path / "my jobs")
        assert bpy.context.scene.marble.last_job == job_dir
        run_ticks(fake_engine.jobs)
        with open(os.path.join(job_dir, "argv.json")) as f:
            argv = json.load(f)["argv"]
        assert argv[argv.index("--preset") + 1] == "fast" and argv[argv.index("--device") + 1] == "cpu"
        assert argv[argv.index("--preview-every") + 1] == "25" and "--no-masks" in argv
        settings.preset, settings.device = 'quality', 'auto'  # the scene's own choice wins
        prefs.job_root = os.path.join(fake_engine.module.__path__[0], "jobs")  # inside the extension: refused
        bpy.ops.marble.train()
        job_dir = bpy.context.window_manager.marble_job.job_dir
        assert os.path.dirname(job_dir) == bpy.utils.extension_path_user(fake_engine.package, path="jobs")
        run_ticks(fake_engine.jobs)
        with open(os.path.join(job_dir, "argv.json")) as f:
            argv = json.load(f)["argv"]
        assert argv[argv.index("--preset") + 1] == "quality" and argv[argv.index("--device") + 1] == "auto"
    finally:
        prefs.job_root, prefs.default_preset, prefs.default_device, prefs.preview_every = "", 'cpu', 'auto', 100


def test_engine_environment_puts_engine_root_first(marble, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/some/where")
    monkeypatch.setenv("PYTHONHOME", "/blender/python")
    env = marble.engine_python.engine_environment("/ext/root")
    assert env["PYTHONPATH"] == os.pathsep.join(["/ext/root", "/some/where"])
    assert "PYTHONHOME" not in env and env["PYTHONUNBUFFERED"] == "1"
    # The real extension root holds the engine package.
    assert os.path.isfile(os.path.join(marble.engine_python.engine_root(), "engine", "io", "protocol.py"))


def test_restore_state_from_events(marble, tmp_path):
    """A job's last state read back from events.jsonl: an engine that stopped without a final event
    (Blender closed) is resumable when it left a checkpoint; an error stays an error."""
    jobs, state, scene = marble.jobs, bpy.context.window_manager.marble_job, bpy.context.scene
    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    events = [{"event": "started", "t": 0.1, "device": "cpu", "backend": "torch", "config": {}},
              {"event": "stage", "t": 0.2, "name": "train"},
              {"event": "progress", "t": 1.0, "iteration": 40, "total": 100, "loss": 0.5, "psnr": 21.5,
               "eta_s": 9.0, "frame": None}]
    (job / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (job / "config.json").write_text("{}")
    scene.marble.last_job = str(job)
    assert jobs.restore_state(scene, state)
    assert state.state == 'failed' and not state.resumable and "no checkpoint" in state.message
    (job / "checkpoints" / "step_0000040.pt").write_bytes(b"x")
    jobs.restore_state(scene, state)
    assert (state.state, state.resumable, state.iteration, state.total) == ('cancelled', True, 40, 100)
    assert state.progress == pytest.approx(0.4) and state.psnr == pytest.approx(21.5) and state.eta_s == 0.0
    assert "Interrupted at iteration 40" in state.message and state.device == "cpu, torch"
    assert bpy.ops.marble.resume.poll()
    with open(job / "events.jsonl", "a") as f:
        f.write(json.dumps({"event": "error", "t": 2.0, "message": "out of memory (fake)"}) + "\n")
    jobs.restore_state(scene, state)
    assert state.state == 'failed' and state.message == "out of memory (fake)" and state.resumable
    scene.marble.last_job = str(tmp_path / "gone")
    assert not jobs.restore_state(scene, state)
    assert state.state == 'idle' and "gone" in state.message
