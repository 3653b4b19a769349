"""The synthetic dynamic scene (demo/dynamic_scene.py): what Cycles renders matches the rig, the
per-frame true surfaces and the recorded motion.

One small dataset (8 frames x 16 cameras at 64 px) is rendered per module. The true surface of each
frame, projected through each view's K and camera-to-world, must cover that view's alpha mask and
nothing else, to a fraction of a pixel (the silhouette's centroid), which fails for a wrong camera
convention, a half-pixel offset or a frame/camera mix-up; motion.json must explain the true surfaces
(rigid part exactly, the rest within the recorded deformation).
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO


bpy = pytest.importorskip("bpy")
from PIL import Image  # noqa: E402

from demo import dynamic_scene  # noqa: E402
from engine.io.ply import read_triangles  # noqa: E402
from engine.io.rig import load_rig  # noqa: E402

FRAMES, CAMERAS, SIZE, SAMPLES = 8, 16, 64, 8
KINDS = ("scenes", "objects", "meshes", "materials", "cameras", "lights", "worlds")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("dynamic")
    before = {kind: set(getattr(bpy.data, kind).keys()) for kind in KINDS}
    summary = dynamic_scene.render_dynamic_dataset(str(out), frames=FRAMES, cameras=CAMERAS,
                                                   size=(SIZE, SIZE), samples=SAMPLES)
    assert {kind: set(getattr(bpy.data, kind).keys()) for kind in KINDS} == before, \
        "render_dynamic_dataset left Blender data behind"
    rig = load_rig(str(out))
    truth = {f: read_triangles(str(out / "truth" / f"frame_{f:06d}.ply"))[:2] for f in range(FRAMES)}
    motion = json.loads((out / "truth" / "motion.json").read_text())
    return out, summary, rig, truth, motion


def project(view, points):
    w2c = np.linalg.inv(view.c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    assert (cam[:, 2] > 0).all(), "surface behind a camera"
    pix = cam @ view.K.T
    return pix[:, :2] / pix[:, 2:]


def alpha_of(view):
    rgba = np.asarray(Image.open(view.image_path))
    assert rgba.shape == (view.height, view.width, 4)
    return rgba[..., 3].astype(float) / 255.0


def surface_samples(truth, count=20000, seed=0):
    """A function frame -> `count` points on that frame's true surface: the same (triangle, barycentric)
    samples on every frame (the meshes share their triangles), area-weighted on frame 0."""
    vertices, triangles = truth[0]
    rng = np.random.default_rng(seed)
    corners = vertices[triangles]
    area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    chosen = rng.choice(len(triangles), count, p=area / area.sum())
    weights = rng.dirichlet([1.0, 1.0, 1.0], count)

    def points(frame):
        v, t = truth[frame]
        return (v[t[chosen]] * weights[:, :, None]).sum(axis=1)
    return points


def dilate(mask):
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.max([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)


def silhouette_scores(view, points):
    """(fraction of points on the mask or next to it, fraction of the mask hit by points, IoU of the hit
    pixels and the mask, offset (2,) of the hit pixels' centroid from the alpha-weighted centroid)."""
    alpha = alpha_of(view)
    uv = project(view, points)
    ij = np.floor(uv).astype(int)
    inside = (ij >= 0).all(axis=1) & (ij[:, 0] < view.width) & (ij[:, 1] < view.height)
    ij = ij[inside]
    mask = alpha > 0.5
    hit = np.zeros_like(mask)
    hit[ij[:, 1], ij[:, 0]] = True
    on_mask = inside.mean() * dilate(mask)[ij[:, 1], ij[:, 0]].mean()
    yy, xx = np.mgrid[:view.height, :view.width] + 0.5
    alpha_centroid = np.array([(xx * alpha).sum(), (yy * alpha).sum()]) / alpha.sum()
    hit_centroid = np.array([xx[hit].mean(), yy[hit].mean()])
    return on_mask, hit[mask].mean(), (hit & mask).sum() / (hit | mask).sum(), hit_centroid - alpha_centroid


def rotation_angle_deg(R):
    return math.degrees(math.acos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)))


def rotation_axis_of(R):
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    return axis / np.linalg.norm(axis)


# ---------------------------------------------------------------------------------------------------
# The rendered dataset

def test_layout_and_summary(dataset):
    out, summary, _, _, motion = dataset
    assert summary["frames"] == FRAMES and summary["cameras"] == CAMERAS
    assert summary["images"] == FRAMES * CAMERAS and tuple(summary["size"]) == (SIZE, SIZE)
    assert summary["transforms"] == str(out / "transforms.json")
    assert summary["motion"] == str(out / "truth" / "motion.json")
    assert summary["truth"] == [str(out / "truth" / f"frame_{f:06d}.ply") for f in range(FRAMES)]
    assert sorted(os.listdir(out / "images")) == [f"{f:06d}" for f in range(FRAMES)]
    for f in range(FRAMES):
        assert sorted(os.listdir(out / "images" / f"{f:06d}")) == [f"cam_{c:02d}.png" for c in range(CAMERAS)]
    assert not [name for _, _, files in os.walk(out) for name in files if name.endswith(".tmp")]
    data = json.loads((out / "transforms.json").read_text())
    assert (data["w"], data["h"]) == (SIZE, SIZE) and {"fl_x", "fl_y", "cx", "cy"} <= set(data)
    assert len(data["frames"]) == FRAMES * CAMERAS
    entry = data["frames"][3 * CAMERAS + 7]
    assert entry["file_path"] == "images/000003/cam_07.png"
    assert (entry["frame"], entry["camera"]) == (3, "cam_07")
    assert (motion["cameras"], motion["size"], len(motion["frames"])) == (CAMERAS, [SIZE, SIZE], FRAMES)
    assert [f["frame"] for f in motion["frames"]] == list(range(FRAMES))


def test_rig_is_dynamic_with_fixed_cameras(dataset):
    _, _, rig, _, _ = dataset
    assert rig.is_dynamic
    assert rig.frames == list(range(FRAMES))
    assert rig.camera_ids == [f"cam_{c:02d}" for c in range(CAMERAS)]
    poses = {}
    for view in rig.views:
        assert (view.width, view.height) == (SIZE, SIZE)
        assert view.K[0, 0] == pytest.approx(view.K[1, 1])
        poses.setdefault(view.camera_id, {})[view.frame] = view
    assert all(sorted(by_frame) == list(range(FRAMES)) for by_frame in poses.values()), \
        "a frame lacks a camera"
    for by_frame in poses.values():
        first = by_frame[0]
        for view in by_frame.values():
            np.testing.assert_array_equal(view.c2w, first.c2w)
            np.testing.assert_array_equal(view.K, first.K)
    # The cameras surround the object at several elevations and all look at one point.
    centres = np.array([by_frame[0].center for by_frame in poses.values()])
    forwards = np.array([by_frame[0].c2w[:3, 2] for by_frame in poses.values()])
    projectors = np.eye(3) - forwards[:, :, None] * forwards[:, None, :]   # the point nearest every axis
    target = np.linalg.solve(projectors.sum(0), np.einsum("kij,kj->i", projectors, centres))
    offsets = centres - target
    distances = np.linalg.norm(offsets, axis=1)
    np.testing.assert_allclose(distances, distances[0], rtol=1e-4)
    np.testing.assert_allclose(forwards, -offsets / distances[:, None], atol=1e-4)
    elevations = np.degrees(np.arcsin(offsets[:, 2] / distances))
    assert elevations.min() < -20.0 and elevations.max() > 50.0
    azimuths = np.sort(np.arctan2(offsets[:, 1], offsets[:, 0]))
    assert np.diff(np.concatenate([azimuths, azimuths[:1] + 2 * np.pi])).max() < np.radians(60)


def test_truth_lands_on_the_masks(dataset):
    """Each frame's true surface, projected into each of its views, covers the alpha mask and nothing
    else; the silhouettes' centroids agree to a fraction of a pixel. The same surface projected into
    the views of another frame does not fit."""
    _, _, rig, truth, _ = dataset
    points = surface_samples(truth)
    right, wrong = [], []
    for view in rig.views:
        p = points(view.frame)
        uv = project(view, p)
        # The whole object is in frame, with a margin, at every frame.
        assert uv.min() > 1.0 and uv.max() < SIZE - 1.0, f"{view.image_path}: the object leaves the frame"
        right.append(silhouette_scores(view, p))
        wrong.append(silhouette_scores(view, points((view.frame + FRAMES // 2) % FRAMES)))
    on_mask, covered, iou, offset = (np.array(column) for column in zip(*right))
    assert on_mask.min() >= 0.99, "surface points project outside the masks"
    assert covered.min() >= 0.97, "mask pixels no surface point projects to"
    assert iou.min() >= 0.85
    # A half-pixel shift of the convention moves this by 0.5 px on average.
    assert np.abs(offset).max() < 0.35 and np.abs(offset.mean(axis=0)).max() < 0.1
    wrong_iou = np.array([w[2] for w in wrong])
    assert iou.mean() - wrong_iou.mean() > 0.2
    assert (iou > wrong_iou).mean() > 0.9


def test_renders_are_textured(dataset):
    _, _, rig, _, _ = dataset
    view = rig.views[-1]
    rgba = np.asarray(Image.open(view.image_path))
    colours = rgba[..., :3][rgba[..., 3] == 255].astype(float)
    assert len(colours) > 0.05 * SIZE * SIZE
    assert colours.std(axis=0).mean() > 20.0


def test_motion_explains_the_truth(dataset):
    _, _, _, truth, motion = dataset
    frames = motion["frames"]
    scene_size = motion["scene_size"]
    v0 = truth[0][0]
    assert scene_size == pytest.approx(np.linalg.norm(v0.max(0) - v0.min(0)), rel=1e-5)
    np.testing.assert_allclose(frames[0]["world_from_canonical"], np.eye(4), atol=1e-12)
    assert frames[0]["deformation"] == 0.0
    w0 = np.array(frames[0]["world_from_object"])
    previous = None
    for entry in frames:
        f = entry["frame"]
        M = np.array(entry["world_from_object"])
        W = np.array(entry["world_from_canonical"])
        np.testing.assert_allclose(M[:3, :3] @ M[:3, :3].T, np.eye(3), atol=1e-9)
        assert np.linalg.det(M[:3, :3]) == pytest.approx(1.0)
        np.testing.assert_allclose(M[3], [0, 0, 0, 1])
        np.testing.assert_allclose(W, M @ np.linalg.inv(w0), atol=1e-9)
        # Frame f's surface is frame 0's moved by W, up to the recorded deformation (which is attained).
        carried = v0 @ W[:3, :3].T + W[:3, 3]
        deviation = np.linalg.norm(truth[f][0] - carried, axis=1).max()
        assert deviation <= entry["deformation"] + 1e-4 * scene_size
        assert deviation >= entry["deformation"] - 1e-4 * scene_size
        assert entry["deformation"] <= 0.05 * scene_size
        if previous is not None:
            step = M @ np.linalg.inv(previous)
            assert 6.0 <= rotation_angle_deg(step[:3, :3]) <= 10.0
            axis = rotation_axis_of(step[:3, :3])
            np.testing.assert_allclose(axis, motion["rotation_axis"], atol=1e-6)
            assert 15.0 < math.degrees(math.acos(abs(axis[2]))) < 60.0, "the rotation axis is not tilted"
            moved = np.linalg.norm(M[:3, 3] - previous[:3, 3]) / scene_size
            assert 0.02 <= moved <= 0.04
        previous = M
    assert frames[-1]["deformation"] > 0.01 * scene_size
    assert all(b["deformation"] >= a["deformation"] - 1e-9
               for a, b in zip(frames[:dynamic_scene.DEFORMATION_RAMP_FRAMES],
                               frames[1:dynamic_scene.DEFORMATION_RAMP_FRAMES + 1]))


def test_last_frame_is_not_a_rigid_copy(dataset):
    """Independently of motion.json: the best rigid fit of the last frame's surface onto frame 0's (known
    correspondences) leaves a residual of more than 1% of the scene's size."""
    _, _, _, truth, motion = dataset
    a, b = truth[0][0], truth[FRAMES - 1][0]
    ca, cb = a.mean(0), b.mean(0)
    U, _, Vt = np.linalg.svd((a - ca).T @ (b - cb))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ D @ U.T
    residual = np.linalg.norm((a - ca) @ R.T + cb - b, axis=1)
    assert residual.max() > 0.01 * motion["scene_size"]
    np.testing.assert_array_equal(truth[0][1], truth[FRAMES - 1][1])  # one mesh, deformed


def test_the_object_moves_in_the_images(dataset):
    _, _, rig, _, _ = dataset
    masks = {(v.frame, v.camera_id): alpha_of(v) > 0.5 for v in rig.views}
    for camera in rig.camera_ids:
        first, last = masks[(0, camera)], masks[(FRAMES - 1, camera)]
        assert (first ^ last).sum() > 0.15 * (first | last).sum(), f"{camera}: the mask hardly changes"
        nxt = masks[(1, camera)]
        assert (first ^ nxt).any(), f"{camera}: frames 0 and 1 render the same"


# ---------------------------------------------------------------------------------------------------
# Geometry (numpy only) and the command line

def test_subject_is_a_closed_asymmetric_surface():
    vertices, triangles = dynamic_scene.knobbed_torus()
    # Closed and consistently oriented: every edge appears once in each direction.
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    assert len({tuple(e) for e in edges.tolist()}) == len(edges)
    assert {tuple(e) for e in edges.tolist()} == {tuple(e) for e in edges[:, ::-1].tolist()}
    corners = vertices[triangles]
    volume = np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6.0
    assert volume > 0.0  # outward-facing
    diagonal = np.linalg.norm(vertices.max(0) - vertices.min(0))
    assert 2.0 < diagonal < 3.0
    # No rotational symmetry: the second moments differ along all three principal axes (a symmetry of
    # order 3 or more makes two equal), and a half turn about any principal axis moves the surface.
    centre = vertices.mean(0)
    eigenvalues, axes = np.linalg.eigh(np.cov((vertices - centre).T))
    assert np.diff(eigenvalues).min() > 0.005 * eigenvalues.max()
    sample = vertices[::7]
    for k in range(3):
        turned = (sample - centre) @ dynamic_scene.rotation(axes[:, k], math.pi).T + centre
        nearest = np.sqrt(((turned[:, None, :] - vertices[None, ::2, :]) ** 2).sum(-1)).min(axis=1)
        assert nearest.max() > 0.03 * diagonal


def test_motion_without_blender_matches_any_frame_count():
    short, long = dynamic_scene.motion(3), dynamic_scene.motion(30)
    for a, b in zip(short["frames"], long["frames"]):
        np.testing.assert_array_equal(a["world"], b["world"])
    # The object stays near the origin however long the sequence.
    centres = np.array([f["world"].mean(0) for f in long["frames"]])
    assert np.linalg.norm(centres, axis=1).max() < 0.4


def test_bad_arguments():
    for kwargs in (dict(frames=1), dict(cameras=0), dict(size=7), dict(size=(64, 4)), dict(samples=0)):
        with pytest.raises(ValueError):
            dynamic_scene.render_dynamic_dataset("/nonexistent/never-written", **kwargs)
    assert not os.path.exists("/nonexistent/never-written")


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "demo.dynamic_scene", str(out), "--frames", "2",
                             "--cameras", "2", "--size", "24", "--samples", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("[dynamic] frame ")]
    assert [line.split(":")[0] for line in progress] == ["[dynamic] frame 1/2", "[dynamic] frame 2/2"]
    assert "Saved:" not in result.stdout  # Blender's per-render chatter is silenced
    rig = load_rig(str(out))
    assert rig.frames == [0, 1] and rig.camera_ids == ["cam_00", "cam_01"]
    assert Image.open(out / "images" / "000001" / "cam_01.png").size == (24, 24)
    assert (out / "truth" / "frame_000001.ply").is_file() and (out / "truth" / "motion.json").is_file()
    for bad, message in ((["--frames", "1"], "frames must be at least 2"),
                         (["--cameras", "0"], "cameras must be at least 1"),
                         (["--size", "4"], "at least 8x8")):
        failed = subprocess.run([sys.executable, "-m", "demo.dynamic_scene", str(tmp_path / "bad"), *bad],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
        assert failed.returncode == 2 and message in failed.stderr
        assert not (tmp_path / "bad").exists()
