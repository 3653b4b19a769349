"""File > Import > Photos (Marble): a calibration job (`python -m engine calibrate`) through the job
client, against a stand-in engine (stand_in_calibrate.py) that plays the calibration's events and writes
a small dataset; at done the cameras, region and points arrive in one collection that becomes the
scene's rig. (The real engine's calibration is tested with the engine.)"""
import importlib.util
import json
import os
import sys
import types

import bpy
import numpy as np
import pytest

from addon_conftest import bpy_free, run_ticks, stand_in_engine
from conftest import project_blender, project_opencv

reducer = bpy_free("addon.jobs.reducer")
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def photos(marble, tmp_path, monkeypatch):
    """The job client pointed at the calibration stand-in; a folder "holiday" of (empty) photographs;
    new job folders in tmp/jobs (the preferences' job folder)."""
    stand_in_engine(marble, tmp_path / "calibrate_root", "stand_in_calibrate.py", monkeypatch)
    folder = tmp_path / "holiday"
    folder.mkdir()
    for i in range(4):
        (folder / f"IMG_{i:04d}.JPG").write_bytes(b"not really a photograph")
    marble.prefs.python = sys.executable
    marble.prefs.job_root = str(tmp_path / "jobs")
    marble.folder = str(folder)
    marble.tmp = tmp_path
    return marble


def calibrate(marble, monkeypatch, mode, path=None):
    monkeypatch.setenv("MARBLE_FAKE_MODE", mode)
    job = marble.jobs.start_calibration(bpy.context, path or marble.folder)
    return job, bpy.context.window_manager.marble_job


def nothing_added(marble):
    settings = bpy.context.scene.marble
    assert not bpy.data.objects and not bpy.data.collections and not bpy.data.meshes
    assert (settings.rig_path, settings.rig_collection, settings.region) == ("", None, None)


def panel_labels():
    """The sidebar drawn with test_register's recording layout: (calls, the labels joined)."""
    name = "marble_test_register"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, "test_register.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    calls = []
    sys.modules[name].draw_panels(calls)
    return calls, " | ".join(c[1] for c in calls if c[0] == "label")


def test_photos_calibrate_and_arrive_as_the_scenes_rig(photos):
    jobs = photos.jobs
    assert bpy.ops.marble.import_photos(directory=photos.folder + os.sep) == {'FINISHED'}
    job = jobs.current_job()
    state = bpy.context.window_manager.marble_job
    assert jobs.is_running() and state.state == 'running' and state.kind == 'calibrate'
    job_dir = job.job_dir
    assert os.path.dirname(job_dir) == str(photos.tmp / "jobs") and state.job_dir == job_dir
    assert bpy.context.scene.marble.last_job == job_dir
    run_ticks(jobs)
    assert not jobs.is_running()
    assert state.state == 'done', state.message
    assert state.progress == 1.0 and state.eta_s == 0.0 and state.phase == "write"
    assert state.message == "Imported 4 cameras and 5 points into 'holiday' (4 of 4 photographs registered)"

    # The command line, where it ran, and its log where a training job's is.
    dataset = os.path.join(job_dir, "dataset")
    with open(os.path.join(job_dir, "argv.json")) as f:
        recorded = json.load(f)
    assert recorded["argv"] == ["calibrate", "--images", photos.folder, "--out", dataset]
    assert os.path.samefile(recorded["cwd"], job_dir)
    with open(os.path.join(job_dir, "engine.log")) as f:
        assert "fake calibrate: starting" in f.read()

    # One collection named after the folder: the cameras, the region, the points.
    with open(os.path.join(job_dir, "truth.json")) as f:
        truth = json.load(f)
    collection = bpy.data.collections["holiday"]
    cameras = sorted((o for o in collection.objects if o.type == 'CAMERA'), key=lambda o: o.name)
    assert [o.name for o in cameras] == sorted(truth["c2w"])
    assert all(c.data.background_images[0].image is not None for c in cameras)
    region = bpy.data.objects["holiday region"]
    assert region.name in collection.objects and region.type == 'EMPTY'
    assert np.allclose(region.location, truth["center"]) and np.allclose(region.scale, [truth["radius"]] * 3)
    points = bpy.data.objects["holiday points"]
    assert points.name in collection.objects and points.type == 'MESH'
    assert {o.name for o in collection.objects} == {o.name for o in cameras} | {region.name, points.name}
    mesh = points.data
    assert (len(mesh.vertices), len(mesh.edges), len(mesh.polygons)) == (5, 0, 0)
    assert np.allclose(np.array(points.matrix_world), np.eye(4))
    co = np.array([v.co[:] for v in mesh.vertices])
    assert np.allclose(co, truth["points"], atol=1e-6)
    colour = mesh.color_attributes["Color"]
    assert colour.domain == 'POINT'
    srgb = np.array([c.color_srgb[:] for c in colour.data])
    assert np.allclose(srgb[:, :3] * 255.0, truth["colors"], atol=0.5) and np.allclose(srgb[:, 3], 1.0)
    # Shown as points (Blender draws no loose vertices in Object Mode), in their colours.
    assert points.modifiers[0].type == 'NODES' and points.modifiers[0].node_group is not None
    evaluated = points.evaluated_get(bpy.context.evaluated_depsgraph_get())
    geometry = evaluated.evaluated_geometry()
    assert len(geometry.pointcloud.points) == 5 and "Color" in geometry.pointcloud.attributes
    # The points line up with the cameras: each projects through Blender's camera where the
    # calibration's K and pose put it (the first point, the centre, in the middle of every image).
    world_points = np.array(truth["points"])
    for camera in cameras:
        expected = project_opencv(np.array(truth["K"]), np.array(truth["c2w"][camera.name]), world_points)
        assert np.allclose(project_blender(camera, co), expected, atol=0.01), camera.name
        assert np.allclose(expected[0], [32.0, 24.0], atol=1e-6)

    # The scene's rig, as Import Rig sets it: Train works on it (the chosen region passed on).
    settings = bpy.context.scene.marble
    assert settings.rig_path == os.path.join(dataset, "transforms.json")
    assert settings.rig_collection == collection and settings.region == region
    plan = jobs.command.plan(bpy.context)
    assert plan.command[plan.command.index("--data") + 1] == settings.rig_path
    region_args = [float(x) for x in plan.command[plan.command.index("--region") + 1:][:4]]
    assert np.allclose(region_args, truth["center"] + [truth["radius"]])
    assert plan.job_dir != job_dir and os.path.dirname(plan.job_dir) == str(photos.tmp / "jobs")

    calls, labels = panel_labels()
    assert "Done: calibration" in labels and "holiday: 4 cameras, 1 frame" in labels
    assert ("progress", 1.0, "100%") in calls and "Loss" not in labels
    # A file load shows the job again, from the dataset's events.jsonl.
    replayed = types.SimpleNamespace()
    assert reducer.replay(replayed, job_dir)
    assert (replayed.state, replayed.kind, replayed.progress) == ('done', 'calibrate', 1.0)
    assert replayed.message == f"Calibrated: 4 of 4 photographs registered; dataset: {dataset}"


def test_a_video_is_named_after_its_stem(photos, monkeypatch):
    video = photos.tmp / "walk around.MOV"
    video.write_bytes(b"not really a video")
    job, state = calibrate(photos, monkeypatch, "ok", str(video))
    run_ticks(photos.jobs)
    assert state.state == 'done', state.message
    with open(os.path.join(job.job_dir, "argv.json")) as f:
        assert json.load(f)["argv"][:3] == ["calibrate", "--images", str(video)]
    assert bpy.context.scene.marble.rig_collection.name == "walk around"
    assert "walk around points" in bpy.data.objects


def test_what_can_be_calibrated(photos):
    source = photos.jobs.command.calibration_source
    folder = photos.folder
    assert source(folder) == source(folder + os.sep) == (folder, "holiday")
    assert source(os.path.join(folder, "IMG_0001.JPG")) == (folder, "holiday")  # a photograph: its folder
    video = photos.tmp / "clip.mp4"
    video.write_bytes(b"")
    assert source(str(video)) == (str(video), "clip")
    notes = photos.tmp / "notes.txt"
    notes.write_text("no")
    for path, message in (("", "No folder"), (str(photos.tmp / "gone"), "does not exist"),
                          (str(notes), "neither a folder of photographs nor a video")):
        with pytest.raises(photos.jobs.JobError, match=message):
            source(path)
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.marble.import_photos(filepath=str(photos.tmp / "gone.mp4"))
    assert not os.path.exists(photos.tmp / "jobs")  # refused before any job folder was made


def test_progress_and_cancel_add_nothing(photos, monkeypatch):
    jobs = photos.jobs
    job, state = calibrate(photos, monkeypatch, "wait")
    run_ticks(jobs, until=lambda: state.phase == "features" and state.iteration == 4)
    assert jobs.is_running() and state.state == 'running'
    assert (state.stage, state.total) == ("calibrate", 4)
    assert state.progress == pytest.approx(0.4) and state.eta_s == pytest.approx(60.0)
    calls, labels = panel_labels()
    assert "Calibrating: features" in labels and "Images with features: 4 / 4" in labels
    assert ("progress", pytest.approx(0.4), "40%, 1:00 left") in calls
    assert ("operator", "marble.cancel") in calls

    assert bpy.ops.marble.cancel() == {'FINISHED'}
    assert state.state == 'cancelling' and state.message == "Stopping the calibration"
    run_ticks(jobs)
    assert state.state == 'cancelled' and state.message == "Cancelled" and not state.resumable
    with open(os.path.join(job.job_dir, "stdin.txt")) as f:
        assert f.read() == "cancel\n"
    nothing_added(photos)
    assert not os.path.exists(os.path.join(job.job_dir, "dataset"))
    calls, labels = panel_labels()
    assert "Cancelled: calibration" in labels and ("operator", "marble.resume") not in calls


@pytest.mark.parametrize("mode", ["error", "die", "badpoints"])
def test_a_failed_calibration_adds_nothing(photos, monkeypatch, mode):
    job, state = calibrate(photos, monkeypatch, mode)
    run_ticks(photos.jobs)
    assert state.state == 'failed'
    if mode == "error":
        assert state.message == f"{photos.folder}: too few photographs to calibrate (fake)"
    elif mode == "die":
        assert "exited with code 1" in state.message and "fake calibrate crashed" in state.message
    else:
        assert state.message.startswith("The calibration finished but its dataset cannot be imported: ")
        assert "points3D.ply" in state.message and "Import Rig reads the dataset" in state.message
    nothing_added(photos)


def test_import_photos_is_in_file_import(photos):
    import_photos = sys.modules[photos.package + ".operators.import_photos"]
    menu = bpy.types.TOPBAR_MT_file_import

    def entries():
        return [f for f in menu._dyn_ui_initialize() if getattr(f, "__name__", "") == "menu_import"
                and f.__module__.endswith(".import_photos")]

    assert entries() == [import_photos.menu_import]
    drawn = []
    fake = types.SimpleNamespace(layout=types.SimpleNamespace(operator=lambda idname, **kw: drawn.append((idname, kw))))
    import_photos.menu_import(fake, bpy.context)
    assert drawn == [("marble.import_photos", {"text": "Photos (Marble)"})]
    assert bpy.types.MARBLE_OT_import_photos.bl_label == "Photos (Marble)"
    assert {"filepath", "directory"} <= set(bpy.ops.marble.import_photos.get_rna_type().properties.keys())
    calls, _ = panel_labels()
    assert ("operator", "marble.import_photos") in calls  # the sidebar's button
    bpy.ops.preferences.addon_disable(module=photos.package)
    try:
        assert not entries()
    finally:
        bpy.ops.preferences.addon_enable(module=photos.package)
    assert len(entries()) == 1


def test_one_job_at_a_time(fake_engine, photos, monkeypatch):
    jobs = fake_engine.jobs
    calibrate_root = str(photos.tmp / "calibrate_root")
    monkeypatch.setenv("MARBLE_FAKE_MODE", "wait")
    # Training runs: importing photographs is refused, with nothing started.
    monkeypatch.setattr(fake_engine.engine_python, "engine_root", lambda: str(photos.tmp / "fake_root"))
    assert bpy.ops.marble.train() == {'FINISHED'}
    state = bpy.context.window_manager.marble_job
    training = jobs.current_job()
    with pytest.raises(jobs.JobError, match="A Marble training job is already running"):
        jobs.start_calibration(bpy.context, photos.folder)
    with pytest.raises(RuntimeError, match="training job is already running"):
        bpy.ops.marble.import_photos(directory=photos.folder)
    assert jobs.current_job() is training and state.kind == 'train'
    bpy.ops.marble.cancel()
    run_ticks(jobs)
    assert state.state == 'cancelled'

    # A calibration runs: Train is refused.
    monkeypatch.setattr(fake_engine.engine_python, "engine_root", lambda: calibrate_root)
    job, state = calibrate(photos, monkeypatch, "wait")
    with pytest.raises(RuntimeError, match="A Marble calibration job is already running"):
        bpy.ops.marble.train()
    assert jobs.current_job() is job and state.kind == 'calibrate'
    bpy.ops.marble.cancel()
    run_ticks(jobs)
    assert state.state == 'cancelled'


def test_calibration_events_without_blender():
    state = types.SimpleNamespace()
    reducer.begin(state, "/jobs/c", resume=False, total=0, kind="calibrate")
    assert (state.kind, state.stage, state.total, state.progress) == ("calibrate", "starting", 0, 0.0)
    reducer.update_state(state, {"event": "started", "command": "calibrate", "images": "/p", "out": "/jobs/c/dataset",
                                 "count": 9, "video": False})
    reducer.update_state(state, {"event": "stage", "name": "calibrate", "phase": "matching"})
    assert (state.stage, state.phase, state.kind) == ("calibrate", "matching", "calibrate")
    reducer.update_state(state, {"event": "progress", "phase": "matching", "iteration": 10, "total": 36,
                                 "eta_s": 12.5, "fraction": 0.55})
    assert (state.iteration, state.total, state.progress, state.eta_s) == (10, 36, 0.55, 12.5)
    reducer.update_state(state, {"event": "progress", "phase": "mapping", "iteration": 3, "total": 9,
                                 "eta_s": None, "fraction": float("nan")})  # no fraction: within the phase
    assert state.phase == "mapping" and state.progress == pytest.approx(1 / 3) and state.eta_s == 12.5
    reducer.update_state(state, {"event": "done", "outputs": {"dataset": "/jobs/c/dataset", "registered": 8,
                                                              "images": 9}})
    assert state.message == "Calibrated: 8 of 9 photographs registered; dataset: /jobs/c/dataset"
    assert state.progress == 1.0
    reducer.update_state(state, {"event": "started", "device": "cpu", "backend": "torch"})
    assert state.kind == "train"  # a training's started (a job may calibrate first, then train)


def test_a_training_job_that_calibrates_first_shows_the_calibration(marble):
    """`train --data PHOTOS` calibrates before its own started: the panel shows the calibration's phase."""
    job = bpy.context.window_manager.marble_job
    job.state, job.kind, job.stage, job.phase = 'running', 'train', "calibrate", "mapping"
    job.iteration, job.total, job.progress = 3, 9, 0.7
    calls, labels = panel_labels()
    assert "Calibrating: mapping" in labels and "Images registered: 3 / 9" in labels and "Loss" not in labels
    job.stage = "train"
    calls, labels = panel_labels()
    assert "Running: train" in labels and "Iteration: 3 / 9" in labels


def test_photos_calibrated_by_the_real_engine(marble, tmp_path):
    """The operator end to end with the engine itself: photographs the tests render (known cameras)
    become cameras that see what the photographs show, and points that lie on the scene."""
    pytest.importorskip("pycolmap")
    import calibration_scene as scenes
    scene = scenes.render_scene(tmp_path / "garden", views=12, fmt="jpg", seed=11)
    marble.prefs.python = sys.executable
    marble.prefs.job_root = str(tmp_path / "jobs")
    assert bpy.ops.marble.import_photos(directory=str(tmp_path / "garden") + os.sep) == {'FINISHED'}
    state = bpy.context.window_manager.marble_job
    run_ticks(marble.jobs, timeout=600)
    assert state.state == 'done', state.message
    settings = bpy.context.scene.marble
    cameras = [o for o in settings.rig_collection.objects if o.type == 'CAMERA']
    points = bpy.data.objects["garden points"]
    assert len(cameras) == 12 and points.name in settings.rig_collection.objects
    co = np.array([v.co[:] for v in points.data.vertices])
    # Every camera sees most points inside its picture (the calibration's world is Blender's).
    for camera in cameras:
        uv = project_blender(camera, co)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < scene.width) & (uv[:, 1] >= 0) & (uv[:, 1] < scene.height)
        assert inside.mean() > 0.5, camera.name
    assert settings.region is not None and settings.rig_path.endswith(os.path.join("dataset", "transforms.json"))
