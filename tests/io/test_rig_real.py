"""The real rigs in ../shared/data: DTU scan 24 read both ways (IDR npz and NeuS2) agree, the fox.

Skipped, with the reason, when the shared data folder is absent (a fresh clone does not have it).
"""
import json
import os

import numpy as np
import pytest

from engine.io.rig import load_rig
from tools.shared_data import shared_data_dir

DATA = shared_data_dir()
pytestmark = pytest.mark.skipif(DATA is None, reason="real data absent: ../shared/data (relative to the "
                                                     "repository) does not exist in this checkout")


def data(*parts):
    path = os.path.join(DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data absent: {path} does not exist")
    return path


def test_dtu_npz():
    rig = load_rig(data("dtu_scan24"))
    assert rig.format == "idr" and rig.path.endswith("cameras_sphere.npz") and len(rig) == 49
    assert all((v.width, v.height) == (1600, 1200) for v in rig.views)
    assert [os.path.basename(v.image_path) for v in rig.views] == [f"{i:06d}.png" for i in range(49)]
    assert [os.path.basename(v.mask_path) for v in rig.views] == [f"{i:03d}.png" for i in range(49)]
    cameras = np.load(data("dtu_scan24", "cameras_sphere.npz"))
    assert np.array_equal(rig.normalization, cameras["scale_mat_0"].astype(float))
    # Each world_mat projects world points like K and c2w do (world_mat is float32: ~1e-7 relative).
    rng = np.random.default_rng(0)
    centre, radius = rig.normalization[:3, 3], rig.normalization[0, 0]
    points = centre + radius * rng.uniform(-0.5, 0.5, size=(20, 3))
    for i, view in enumerate(rig.views):
        P = cameras[f"world_mat_{i}"].astype(float)[:3]
        expected = (np.c_[points, np.ones(20)] @ P.T)
        expected = expected[:, :2] / expected[:, 2:]
        cam = (points - view.c2w[:3, 3]) @ view.c2w[:3, :3]
        uv = cam @ view.K.T
        assert np.abs(uv[:, :2] / uv[:, 2:] - expected).max() < 1e-3
        # Cameras look at the object: the sphere's centre is in front of every camera, inside the image.
        c = (centre - view.c2w[:3, 3]) @ view.c2w[:3, :3]
        px = view.K @ c / c[2]
        assert c[2] > 0 and 0 < px[0] < view.width and 0 < px[1] < view.height
    assert not rig.warnings   # DTU's skew moves pixels by at most 0.71 px: below the warning


def test_dtu_neus2_agrees_with_the_npz():
    """transforms_neus2.json holds the npz's cameras in the normalised frame (NeuS2's scale 0.5 and
    offset 0.5 then map the unit sphere onto NeuS2's cube [0, 1]^3) and n2w = scale_mat_0. Read with
    n2w, both give the same cameras in DTU's world frame and the same normalisation."""
    npz = load_rig(data("dtu_scan24", "cameras_sphere.npz"))
    path = data("dtu_scan24", "transforms_neus2.json")
    neus2 = load_rig(path)
    raw = json.load(open(path))
    assert neus2.format == "neus2" and len(neus2) == 49 and raw["from_na"] is True
    assert np.array_equal(neus2.normalization, npz.normalization)   # n2w @ unit sphere == scale_mat_0
    scale_mat = npz.normalization
    radius = scale_mat[0, 0]
    for a, b, frame in zip(npz.views, neus2.views, raw["frames"]):
        assert a.image_path == b.image_path and a.mask_path == b.mask_path
        assert np.abs(a.K - b.K).max() / np.abs(a.K).max() < 1e-6       # skew included
        assert np.abs(a.c2w[:3, 3] - b.c2w[:3, 3]).max() / radius < 1e-6  # centres, in sphere radii
        assert np.abs(a.c2w[:3, :3] - b.c2w[:3, :3]).max() < 1e-6          # orientations
        # The relation, spelled out: the file's position p is normalised, NeuS2's is p * 0.5 + 0.5,
        # and the world's is scale_mat @ p.
        p = np.asarray(frame["transform_matrix"])[:3, 3]
        ngp = p * raw["scale"] + np.asarray(raw["offset"])
        world = scale_mat[:3, :3] @ ((ngp - np.asarray(raw["offset"])) / raw["scale"]) + scale_mat[:3, 3]
        assert np.abs(world - a.c2w[:3, 3]).max() / radius < 1e-6


def test_fox_skips_the_missing_images_with_one_warning():
    rig = load_rig(data("fox"))
    assert rig.format == "instant-ngp" and len(rig) == 50 and rig.meta["aabb_scale"] == 4
    assert len(rig.warnings) == 1 and "17 of 67 frames skipped" in rig.warnings[0]
    view = rig.views[0]
    assert (view.width, view.height) == (1080, 1920)   # portrait
    assert np.allclose(view.K, [[1375.52, 0, 554.558], [0, 1374.49, 965.268], [0, 0, 1]])
    assert np.allclose(view.distortion, [0.0578421, -0.0805099, -0.000980296, 0.00015575])
    raw = json.load(open(data("fox", "transforms.json")))
    first = np.asarray(raw["frames"][0]["transform_matrix"])
    assert np.allclose(view.c2w, first @ np.diag([1.0, -1.0, -1.0, 1.0]))
    # Every camera looks towards the middle of the capture (the fox).
    centres = np.array([v.c2w[:3, 3] for v in rig.views])
    middle = centres.mean(axis=0)
    assert all(((middle - v.c2w[:3, 3]) @ v.c2w[:3, 2]) > 0 for v in rig.views)
