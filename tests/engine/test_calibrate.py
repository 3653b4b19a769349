"""`python -m engine calibrate` on scenes the tests render themselves (tests/calibration_scene.py):
the poses COLMAP recovers against the known cameras (after a similarity fit), the dataset it writes,
its events, video and HEIC input, the region, and every failure a user can meet."""
import json
import os
import shutil
import signal

import numpy as np
import pytest

import calibration_scene as scenes
from engine_process import assert_one_error, engine, read_until, run_engine

from bench.pose_compare import similarity

from engine.io import protocol
from engine.io.ply import read_ply
from engine.io.rig import load_rig

pytest.importorskip("pycolmap")
TIMEOUT = 600


def pose_errors(rig, scene):
    """(median camera-centre error in % of the object's radius, largest rotation error in degrees,
    the similarity (scale, R, t) from the rig's world to the scene's)."""
    truth = {os.path.splitext(os.path.basename(p))[0]: c for p, c in zip(scene.paths, scene.c2w)}
    names = [v.name for v in rig.views]
    found = np.array([v.c2w for v in rig.views])
    known = np.array([truth[n] for n in names])
    scale, R, t = similarity(found[:, :3, 3], known[:, :3, 3])
    moved = (scale * (R @ found[:, :3, 3].T)).T + t
    centre_error = np.linalg.norm(moved - known[:, :3, 3], axis=1)
    rotation = [np.degrees(np.arccos(np.clip((np.trace((R @ f[:3, :3]).T @ k[:3, :3]) - 1) / 2, -1, 1)))
                for f, k in zip(found, known)]
    return 100 * np.median(centre_error) / scene.object_radius, max(rotation), (scale, R, t)


def calibrate(images, out, *flags, timeout=TIMEOUT):
    return run_engine(["calibrate", "--images", str(images), "--out", str(out), *flags], timeout=timeout)


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    """24 photographs of the scene all around it, and their calibration (global mapper)."""
    folder = tmp_path_factory.mktemp("ring")
    scene = scenes.render_scene(folder / "photos", views=24)
    code, events, err = calibrate(folder / "photos", folder / "dataset")
    assert code == protocol.EXIT_OK, err
    return scene, folder / "dataset", events


def test_calibrated_poses_match_the_rendered_cameras(ring):
    scene, dataset, events = ring
    rig = load_rig(str(dataset))
    assert len(rig.views) == 24
    centre_error, rotation_error, _ = pose_errors(rig, scene)
    assert centre_error < 1.0, f"median camera-centre error {centre_error:.3f}% of the object's radius"
    assert rotation_error < 0.5
    fx = np.array([v.K[0, 0] for v in rig.views])
    assert np.allclose(fx, scene.fx, rtol=0.01), (fx[0], scene.fx)   # one shared camera, focal found
    assert all(np.allclose(v.K[:2, 2], [scene.width / 2, scene.height / 2], atol=1.0) for v in rig.views)


def test_the_dataset_holds_the_photographs_the_model_and_the_points(ring):
    scene, dataset, _ = ring
    assert sorted(os.listdir(dataset / protocol.IMAGES_DIR)) == sorted(os.path.basename(p) for p in scene.paths)
    with open(dataset / protocol.TRANSFORMS_FILE) as f:
        data = json.load(f)
    assert {"fl_x", "fl_y", "cx", "cy", "w", "h", "normalization"} <= set(data)
    assert all(frame["file_path"].startswith("images/img_") for frame in data["frames"])
    assert {"cameras.bin", "images.bin", "points3D.bin"} <= set(os.listdir(dataset / protocol.SPARSE_MODEL_DIR))
    # COLMAP's own model and the transforms.json agree (the COLMAP reader gives the same cameras).
    colmap_rig = load_rig(str(dataset / protocol.SPARSE_MODEL_DIR / "cameras.bin"))
    by_name = {v.name: v for v in load_rig(str(dataset)).views}
    for view in colmap_rig.views:
        assert np.allclose(view.c2w, by_name[view.name].c2w, atol=1e-6)
    xyz, _, _, rgb = read_ply(str(dataset / protocol.POINTS_FILE))
    assert len(xyz) > 500 and rgb is not None and rgb.std() > 10     # coloured, not one grey
    assert not [n for n in os.listdir(dataset.parent) if n.startswith(".")]   # no staging left behind


def test_the_region_holds_the_object_and_not_the_ground(ring):
    scene, dataset, _ = ring
    rig = load_rig(str(dataset))
    _, _, (scale, R, t) = pose_errors(rig, scene)
    n = np.asarray(rig.normalization)
    centre = scale * R @ n[:3, 3] + t
    radius = scale * abs(np.linalg.det(n[:3, :3])) ** (1 / 3)
    # The sphere and the box beside it inside, the region not much larger than the object.
    assert np.linalg.norm(centre - scenes.SPHERE_CENTER) + scenes.SPHERE_RADIUS < radius
    for corner in np.array(np.meshgrid(*zip(scenes.BOX_MIN, scenes.BOX_MAX))).reshape(3, -1).T:
        assert np.linalg.norm(corner - centre) < 1.05 * radius
    assert radius < 2.0 * scene.object_radius
    half, z = scene.ground_half, scene.ground_z
    corners = np.array([[x, y, z] for x in (-half, half) for y in (-half, half)])
    assert (np.linalg.norm(corners - centre, axis=1) > radius).all()   # the ground's far edges are outside


def test_events_say_each_phase_with_progress(ring):
    _, dataset, events = ring
    assert events[0]["event"] == protocol.STARTED and events[0]["command"] == "calibrate"
    assert events[0]["count"] == 24 and events[0]["video"] is False
    phases = [e["phase"] for e in events if e["event"] == protocol.STAGE]
    assert phases == list(protocol.CALIBRATE_PHASES)
    progress = [e for e in events if e["event"] == protocol.PROGRESS]
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    features = [e for e in progress if e["phase"] == "features"]
    assert features[-1]["iteration"] == features[-1]["total"] == 24
    assert len({e["iteration"] for e in progress if e["phase"] == "matching"}) > 3   # steps, not one jump
    done = events[-1]
    assert done["event"] == protocol.DONE and done["outputs"]["registered"] == 24
    assert done["outputs"]["transforms"] == str(dataset / protocol.TRANSFORMS_FILE)
    logged = protocol.read_events(str(dataset / protocol.EVENTS_FILE))
    assert [e["event"] for e in logged] == [e["event"] for e in events]


def test_incremental_mapper_from_jpegs_with_exif(tmp_path):
    scene = scenes.render_scene(tmp_path / "photos", views=12, fmt="jpg", exif=True, seed=3)
    code, events, err = calibrate(tmp_path / "photos", tmp_path / "dataset", "--mapper", "incremental",
                                  "--max-size", "320")
    assert code == protocol.EXIT_OK, err
    rig = load_rig(str(tmp_path / "dataset"))
    assert len(rig.views) == 12
    centre_error, rotation_error, _ = pose_errors(rig, scene)
    assert centre_error < 1.0 and rotation_error < 0.5


def test_a_video_calibrates_from_its_sharpest_frames(tmp_path):
    scene = scenes.render_video_scene(str(tmp_path / "walk.mp4"), frames=30, seed=1)
    code, events, err = calibrate(tmp_path / "walk.mp4", tmp_path / "dataset")
    assert code == protocol.EXIT_OK, err
    assert events[0]["video"] is True
    rig = load_rig(str(tmp_path / "dataset"))
    assert len(rig.views) == 30       # fewer frames than the automatic choice keeps: all of them
    names = sorted(v.name for v in rig.views)
    assert names[0] == "frame_000000" and names[-1] == "frame_000029"
    truth = scenes.Scene(paths=[f"{n}.jpg" for n in names], K=scene.K, c2w=scene.c2w, width=scene.width,
                         height=scene.height, object_center=scene.object_center, object_radius=scene.object_radius)
    centre_error, rotation_error, _ = pose_errors(rig, truth)
    assert centre_error < 1.0 and rotation_error < 0.5
    # --every N takes every Nth frame.
    code, events, err = calibrate(tmp_path / "walk.mp4", tmp_path / "every3", "--every", "3")
    assert code == protocol.EXIT_OK, err
    assert sorted(os.listdir(tmp_path / "every3" / protocol.IMAGES_DIR)) == \
        [f"frame_{i:06d}.jpg" for i in range(0, 30, 3)]


def test_heic_photographs_become_jpegs_with_their_exif(tmp_path):
    from PIL import Image
    scene = scenes.render_scene(tmp_path / "png", views=12, seed=2)
    photos = tmp_path / "phone"
    photos.mkdir()
    exif = scenes.exif_focal_bytes(scene.fx, scene.width, scene.height)
    for path in scene.paths:
        scenes.write_heic(path, str(photos / (os.path.splitext(os.path.basename(path))[0] + ".HEIC")), exif=exif)
    code, events, err = calibrate(photos, tmp_path / "dataset")
    assert code == protocol.EXIT_OK, err
    written = sorted(os.listdir(tmp_path / "dataset" / protocol.IMAGES_DIR))
    assert written == [f"img_{i:03d}.jpg" for i in range(12)]
    with Image.open(tmp_path / "dataset" / protocol.IMAGES_DIR / written[0]) as image:
        assert image.size == (scene.width, scene.height)
        assert scenes.focal_from_exif(image.getexif(), scene.width, scene.height) == \
            pytest.approx(scene.fx, rel=0.03)
    rig = load_rig(str(tmp_path / "dataset"))
    truth = scenes.Scene(paths=[p.replace(".png", ".jpg") for p in scene.paths], K=scene.K, c2w=scene.c2w,
                         width=scene.width, height=scene.height, object_center=scene.object_center,
                         object_radius=scene.object_radius)
    centre_error, rotation_error, _ = pose_errors(rig, truth)
    assert len(rig.views) == 12 and centre_error < 1.0


def noise_images(folder, count, seed=7, size=(320, 240)):
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        # Smooth random blobs: SIFT finds features, but no two pictures share any.
        small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        path = os.path.join(folder, f"noise_{i:02d}.png")
        Image.fromarray(small).resize(size, Image.BICUBIC).save(path)
        paths.append(path)
    return paths


def test_too_few_photographs_and_unreadable_files_are_refused(tmp_path):
    scene = scenes.render_scene(tmp_path / "two", views=2, width=64, height=48)
    assert_one_error(*calibrate(tmp_path / "two", tmp_path / "a"), "only 2 photographs", "at least 3")
    assert_one_error(*calibrate(tmp_path / "nothing", tmp_path / "b"), "no such folder or video")
    (tmp_path / "empty").mkdir()
    assert_one_error(*calibrate(tmp_path / "empty", tmp_path / "c"), "no photographs")
    shutil.copy(scene.paths[0], tmp_path / "two" / "img_002.png")
    (tmp_path / "two" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert_one_error(*calibrate(tmp_path / "two", tmp_path / "d"), "broken.jpg", "not a readable image")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 broken")
    assert_one_error(*calibrate(tmp_path / "clip.mp4", tmp_path / "e"), "clip.mp4")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert_one_error(*calibrate(tmp_path / "two", tmp_path / "taken"), "not empty", "--overwrite")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert_one_error(*calibrate(tmp_path / "two", tmp_path / "f", "--max-size", "10"), "--max-size")
    assert_one_error(*calibrate(tmp_path / "two", tmp_path / "g", "--every", "2"), "--every", "video")
    assert not [p for p in os.listdir(tmp_path) if p in "abcdefg" or p.startswith(".")]


def test_photographs_that_share_nothing_are_named(tmp_path):
    scenes.render_scene(tmp_path / "mixed", views=12, seed=4)
    noise_images(tmp_path / "mixed", 14)
    code, events, err = calibrate(tmp_path / "mixed", tmp_path / "dataset", timeout=TIMEOUT)
    assert_one_error(code, events, err, "registered 12 of 26", "share no features", "noise_00")
    assert not (tmp_path / "dataset").exists()
    noise_images(tmp_path / "only_noise", 5)
    assert_one_error(*calibrate(tmp_path / "only_noise", tmp_path / "dataset"), "no camera could be placed")


def test_a_few_strays_are_left_out_with_a_warning(tmp_path):
    scene = scenes.render_scene(tmp_path / "photos", views=16, seed=5)
    noise_images(tmp_path / "photos", 2)
    code, events, err = calibrate(tmp_path / "photos", tmp_path / "dataset")
    assert code == protocol.EXIT_OK, err
    warnings = [e["message"] for e in events if e["event"] == protocol.WARNING]
    assert any("registered 16 of 18" in w and "noise_00.png" in w and "noise_01.png" in w for w in warnings), warnings
    assert len(load_rig(str(tmp_path / "dataset")).views) == 16
    assert sorted(os.listdir(tmp_path / "dataset" / protocol.IMAGES_DIR)) == \
        sorted(os.path.basename(p) for p in scene.paths)


def test_two_separate_captures_keep_the_larger_and_name_the_other(tmp_path):
    photos = tmp_path / "photos"
    big = scenes.render_scene(photos, views=16, seed=6, prefix="big_")
    # The same geometry with other textures (another seed), photographed apart: a second model.
    scenes.render_scene(photos, views=12, seed=9, prefix="small_")
    code, events, err = calibrate(photos, tmp_path / "dataset")
    assert code == protocol.EXIT_OK, err
    warnings = " ".join(e["message"] for e in events if e["event"] == protocol.WARNING)
    assert "2 separate groups" in warnings and "small_000.png" in warnings, warnings
    rig = load_rig(str(tmp_path / "dataset"))
    assert sorted(v.name for v in rig.views) == sorted(os.path.splitext(os.path.basename(p))[0] for p in big.paths)


def test_cancel_leaves_no_dataset(tmp_path):
    scenes.render_scene(tmp_path / "photos", views=24, seed=8)
    proc = engine(["calibrate", "--images", str(tmp_path / "photos"), "--out", str(tmp_path / "dataset")])
    read_until(proc, protocol.STAGE, timeout=TIMEOUT)
    read_until(proc, protocol.PROGRESS, timeout=TIMEOUT)
    proc.send_signal(signal.SIGTERM)
    rest = [protocol.decode(line) for line in proc.stdout.read().splitlines()]
    proc.wait(timeout=60)
    assert proc.returncode == protocol.EXIT_CANCELLED
    assert [e for e in rest if e][-1]["event"] == protocol.CANCELLED
    assert os.listdir(tmp_path) == ["photos"]       # neither the dataset nor its staging folder


@pytest.mark.slow
def test_train_from_a_folder_of_photographs(tmp_path):
    scenes.render_scene(tmp_path / "photos", views=16, seed=10)
    job = tmp_path / "job"
    code, events, err = run_engine(["train", "--data", str(tmp_path / "photos"), "--out", str(job),
                                    "--iterations", "30", "--resolution", "32"], timeout=TIMEOUT)
    assert code == protocol.EXIT_OK, err
    kinds = [(e["event"], e.get("phase") or e.get("name")) for e in events if e["event"] in ("stage", "started")]
    assert kinds[:5] == [("stage", "read"), ("stage", "features"), ("stage", "matching"), ("stage", "mapping"),
                         ("stage", "write")]
    assert kinds[5] == ("started", None)
    started = next(e for e in events if e["event"] == protocol.STARTED)
    assert started["data"] == str(job / protocol.DATASET_DIR / protocol.TRANSFORMS_FILE)
    assert os.path.isfile(events[-1]["outputs"]["mesh"])
    # Resuming keeps the calibration instead of making it again.
    code, events, err = run_engine(["train", "--data", str(tmp_path / "photos"), "--out", str(job), "--resume",
                                    "--iterations", "40", "--resolution", "32"], timeout=TIMEOUT)
    assert code == protocol.EXIT_OK, err
    assert not [e for e in events if e["event"] == protocol.STAGE and e.get("name") == "calibrate"]
