"""The job client against a real subprocess: a stand-in `engine` package (in a temporary folder that
the add-on is pointed at) speaks the event protocol over real pipes, so marble.train, tick(),
marble.cancel and the failure paths run as they do with the real engine, only in milliseconds.
(The real engine end to end is tests/test_end_to_end*.py.)"""
import json
import os
import sys
import time

import bpy
import pytest

from conftest import make_rig, ring_cameras

FAKE_ENGINE = r'''
"""Stand-in for `python -m engine train`: behaviour chosen by $MARBLE_FAKE_MODE."""
import json, os, sys, time
import numpy as np

args = sys.argv[1:]
if args[:1] == ["doctor"]:
    print(json.dumps({"ok": True, "message": "fake engine ready"}))
    sys.exit(0)
def option(name):
    return args[args.index(name) + 1] if name in args else None

out = option("--out")
mode = os.environ.get("MARBLE_FAKE_MODE", "ok")
with open(os.path.join(out, "argv.json"), "w") as f:
    json.dump({"argv": args, "cwd": os.getcwd()}, f)

def emit(kind, **fields):
    print(json.dumps(dict(event=kind, t=round(time.monotonic() % 1000, 3), **fields)), flush=True)

def write_ply(path, n_extra=0):
    t = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t],
                  [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=np.float32)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                  [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
                  [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    f = f[:len(f) - n_extra]
    vertex = np.zeros(len(v), dtype=[("p", "<f4", 3), ("c", "u1", 3)])
    vertex["p"], vertex["c"] = v, [200, 100, 50]
    face = np.zeros(len(f), dtype=[("n", "u1"), ("i", "<i4", 3)])
    face["n"], face["i"] = 3, f
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write((f"ply\nformat binary_little_endian 1.0\nelement vertex {len(v)}\nproperty float x\n"
                  "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
                  f"property uchar blue\nelement face {len(f)}\nproperty list uchar int vertex_indices\n"
                  "end_header\n").encode() + vertex.tobytes() + face.tobytes())
    return path

print("fake engine: starting", file=sys.stderr, flush=True)
emit("started", config={"preset": option("--preset")}, device="cpu", backend="fake", job=out)
print("a stray line that is not an event", flush=True)
if mode == "error":
    emit("error", message=f"{option('--data')}: no usable views (fake)")
    sys.exit(2)
# Like the real engine: the region actually used, from --region or its own estimate.
if "--region" in args:
    i = args.index("--region")
    x, y, z, r = (float(v) for v in args[i + 1:i + 5])
    region = {"center": [x, y, z], "radius": r}
else:
    region = {"center": [0.1, 0.2, 0.3], "radius": 0.7}
emit("stage", name="train", region=region)
total = 4
for i in range(1, total + 1):
    emit("progress", iteration=i, total=total, loss=1.0 / i, losses={"rgb": 1.0 / i}, psnr=20.0 + i,
         eta_s=float(total - i) * 30, frame=None)
if mode == "die":
    print("Traceback (most recent call last):\nRuntimeError: fake engine crashed on purpose", file=sys.stderr,
          flush=True)
    sys.exit(1)
if mode == "stubborn":  # ignores the cancel line and SIGTERM: only SIGKILL stops it
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdin.readline()
    time.sleep(60)
if mode == "wait":
    emit("preview", path=write_ply(os.path.join(out, "previews", "preview_000004.ply"), n_extra=4))
    line = sys.stdin.readline()
    with open(os.path.join(out, "stdin.txt"), "w") as f:
        f.write(line)
    if line.strip() == "cancel":
        os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        emit("cancelled", checkpoint=os.path.join(out, "checkpoints", "last.pt"))
        sys.exit(3)
    sys.exit(1)
emit("stage", name="extract")
mesh = write_ply(os.path.join(out, "meshes", "mesh.ply"))
emit("mesh", path=mesh, frame=None)
emit("done", outputs={"mesh": mesh})
'''


@pytest.fixture
def fake_engine(marble, tmp_path, monkeypatch):
    """A scene with an imported rig, the job client pointed at the stand-in engine."""
    root = tmp_path / "fake_root"
    (root / "engine").mkdir(parents=True)
    (root / "engine" / "__init__.py").write_text("")
    (root / "engine" / "__main__.py").write_text(FAKE_ENGINE)
    monkeypatch.setattr(marble.jobs, "engine_root", lambda: str(root))
    rig_path = make_rig(tmp_path, ring_cameras(count=3), name="fakerig")
    assert bpy.ops.marble.import_rig(filepath=rig_path) == {'FINISHED'}
    settings = bpy.context.scene.marble
    settings.job_dir = str(tmp_path / "job")
    marble.prefs.python = sys.executable
    marble.rig_path = rig_path
    marble.job_dir = str(tmp_path / "job")
    return marble


def run_ticks(jobs, until=None, timeout=30.0):
    """Call tick() as Blender's timer would until it returns None (or `until()` holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until is not None and until():
            return True
        if jobs.tick() is None:
            return until is None or until()
        time.sleep(0.01)
    raise AssertionError("the job did not finish in time")


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
    monkeypatch.setenv("MARBLE_FAKE_MODE", "wait")
    bpy.ops.marble.train()
    state = bpy.context.window_manager.marble_job
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
    monkeypatch.setenv("MARBLE_FAKE_MODE", "die")
    bpy.ops.marble.train()
    run_ticks(fake_engine.jobs)
    state = bpy.context.window_manager.marble_job
    assert state.state == 'failed'
    assert "exit" in state.message and "code 1" in state.message
    assert "fake engine crashed on purpose" in state.message  # the tail of engine.log
    assert state.iteration == 4
    assert not any(o.type == 'MESH' for o in bpy.data.objects)


def test_engine_error_event_fails_with_its_message(fake_engine, monkeypatch):
    monkeypatch.setenv("MARBLE_FAKE_MODE", "error")
    bpy.ops.marble.train()
    run_ticks(fake_engine.jobs)
    state = bpy.context.window_manager.marble_job
    assert state.state == 'failed'
    assert state.message == f"{fake_engine.rig_path}: no usable views (fake)"


def test_process_killed_from_outside_fails(fake_engine, monkeypatch):
    monkeypatch.setenv("MARBLE_FAKE_MODE", "wait")
    jobs = fake_engine.jobs
    bpy.ops.marble.train()
    state = bpy.context.window_manager.marble_job
    run_ticks(jobs, until=lambda: state.iteration == 4)
    jobs.current_job().process.kill()
    run_ticks(jobs)
    assert state.state == 'failed' and "stopped by signal 9" in state.message


def test_cancel_escalates_to_kill(fake_engine, monkeypatch):
    monkeypatch.setenv("MARBLE_FAKE_MODE", "stubborn")
    jobs = fake_engine.jobs
    monkeypatch.setattr(jobs, "CANCEL_GRACE_S", 0.3)
    bpy.ops.marble.train()
    state = bpy.context.window_manager.marble_job
    run_ticks(jobs, until=lambda: state.iteration == 4)
    process = jobs.current_job().process
    bpy.ops.marble.cancel()
    run_ticks(jobs, timeout=10.0)
    assert process.returncode == -9  # SIGTERM was ignored, so it was killed
    assert state.state == 'cancelled' and "before confirming" in state.message


def test_disabling_the_extension_stops_the_engine(fake_engine, monkeypatch):
    monkeypatch.setenv("MARBLE_FAKE_MODE", "wait")
    jobs = fake_engine.jobs
    bpy.ops.marble.train()
    state = bpy.context.window_manager.marble_job
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
    env = marble.jobs.engine_environment("/ext/root")
    assert env["PYTHONPATH"] == os.pathsep.join(["/ext/root", "/some/where"])
    assert "PYTHONHOME" not in env and env["PYTHONUNBUFFERED"] == "1"
    # The real extension root holds the engine package.
    assert os.path.isfile(os.path.join(marble.jobs.engine_root(), "engine", "io", "protocol.py"))


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
