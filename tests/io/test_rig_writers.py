"""The writers: write_transforms and write_colmap_text read back to the same rig (1e-9), from every
reader's rigs, keeping what each format can hold (normalisation, frames, cameras, masks, skew)."""
import json
import os

import numpy as np
import pytest
from rig_files import (EXAMPLE_N2W as N2W, colmap_model_cameras, look_at, nerf_synthetic_cameras, sample_cameras,
                       skewed_cameras, write_colmap_binary_files, write_dynamic_transforms, write_idr_npz,
                       write_instant_ngp, write_nerf_synthetic, write_neus2, write_neus2_dynamic)

from engine.io.rig import RigError, load_rig, write_colmap_text, write_transforms


def dynamic_cameras(distortion=True):
    cams = []
    for frame in (3, 4):
        for i, cam in enumerate(sample_cameras(3, distortion=distortion)):
            cams.append(dict(cam, frame=frame, camera=f"c{i}"))
    return cams


def source_rig(kind, folder):
    """A rig read from a file of `kind` written from known cameras."""
    if kind == "instant-ngp":
        return load_rig(write_instant_ngp(folder, sample_cameras(5, distortion=True), extra={"aabb_scale": 2}))
    if kind == "nerf-synthetic":
        return load_rig(write_nerf_synthetic(folder, nerf_synthetic_cameras()))
    if kind == "neus2":
        return load_rig(write_neus2(folder, skewed_cameras(4), n2w=N2W))
    if kind == "neus2-dynamic":
        return load_rig(write_neus2_dynamic(folder, dynamic_cameras(distortion=False), naming="neus2"))
    if kind == "colmap":
        return load_rig(write_colmap_binary_files(folder, colmap_model_cameras()))
    if kind == "idr":
        return load_rig(write_idr_npz(folder, skewed_cameras(4), scale_mat=N2W))
    if kind == "dynamic":
        return load_rig(write_dynamic_transforms(folder, dynamic_cameras()))
    raise AssertionError(kind)


KINDS = ["instant-ngp", "nerf-synthetic", "neus2", "neus2-dynamic", "colmap", "idr", "dynamic"]


def assert_same_rig(a, b, tol=1e-9, split=False):
    assert len(a.views) == len(b.views)
    for u, v in zip(a.views, b.views):
        assert u.image_path == v.image_path and u.mask_path == v.mask_path
        assert (u.width, u.height, u.frame, u.camera_id) == (v.width, v.height, v.frame, v.camera_id)
        assert np.abs(u.K - v.K).max() <= tol * np.abs(u.K).max()
        assert np.abs(u.c2w - v.c2w).max() <= tol * max(1.0, np.abs(u.c2w).max())
        assert (u.distortion is None) == (v.distortion is None)
        if u.distortion is not None:
            assert np.abs(u.distortion - v.distortion).max() <= tol
        if split:
            assert u.split == v.split
    if a.normalization is None:
        assert b.normalization is None
    else:
        assert np.abs(a.normalization - b.normalization).max() <= tol * np.abs(a.normalization).max()
    assert a.is_dynamic == b.is_dynamic


@pytest.mark.parametrize("kind", KINDS)
def test_write_transforms_round_trip(tmp_path, kind):
    rig = source_rig(kind, tmp_path / "source")
    out = str(tmp_path / "export" / "transforms.json")
    os.makedirs(os.path.dirname(out))
    write_transforms(rig, out)
    again = load_rig(out)
    assert again.format == "instant-ngp" and again.path == out
    assert_same_rig(rig, again, tol=1e-12)
    # Exporting the re-read rig gives the same file (a fixed point).
    out2 = str(tmp_path / "export" / "again.json")
    write_transforms(again, out2)
    first, second = json.load(open(out)), json.load(open(out2))
    assert first == second
    assert not [n for n in os.listdir(os.path.dirname(out)) if n.endswith(".tmp")]


def test_write_transforms_layout(tmp_path):
    # Shared intrinsics at the top; per-frame ones when cameras differ; skew as intrinsic_matrix.
    cams = sample_cameras(3)
    for cam in cams:
        cam.update(K=cams[0]["K"], width=64, height=48)
    shared = load_rig(write_instant_ngp(tmp_path / "a", cams))
    path = str(tmp_path / "a" / "out.json")
    write_transforms(shared, path)
    data = json.load(open(path))
    assert {"fl_x", "fl_y", "cx", "cy", "w", "h"} <= set(data) and "fl_x" not in data["frames"][0]
    assert "frame" not in data["frames"][0] and "camera" not in data["frames"][0] and "normalization" not in data
    assert data["frames"][0]["file_path"] == "images/cam_000.png"

    rig = source_rig("idr", tmp_path / "b")
    write_transforms(rig, path)
    data = json.load(open(path))
    assert "fl_x" not in data and np.array_equal(data["frames"][1]["intrinsic_matrix"], rig.views[1].K)
    assert data["frames"][0]["mask_path"] == "../b/mask/000.png"
    assert np.array_equal(data["normalization"], N2W)

    rig = source_rig("dynamic", tmp_path / "c")
    write_transforms(rig, path)
    frames = json.load(open(path))["frames"]
    assert [(f["frame"], f["camera"]) for f in frames] == [(v.frame, v.camera_id) for v in rig.views]


def test_write_transforms_refuses_bad_rigs_and_keeps_the_old_file(tmp_path):
    rig = source_rig("instant-ngp", tmp_path)
    path = str(tmp_path / "out.json")
    write_transforms(rig, path)
    before = open(path).read()
    rig.views[2].c2w = rig.views[2].c2w.copy()
    rig.views[2].c2w[0, 0] = np.nan
    with pytest.raises(RigError, match="view 2"):
        write_transforms(rig, path)
    rig.views[2].c2w = np.eye(4)
    rig.normalization = np.diag([1.0, 2.0, 3.0, 1.0])   # not a similarity
    with pytest.raises(RigError, match="normalisation"):
        write_transforms(rig, path)
    assert open(path).read() == before and os.listdir(tmp_path).count("out.json.tmp") == 0


@pytest.mark.parametrize("kind", ["instant-ngp", "colmap", "nerf-synthetic"])
@pytest.mark.parametrize("where", ["sparse/0", "elsewhere"])
def test_write_colmap_text_round_trip(tmp_path, kind, where):
    rig = source_rig(kind, tmp_path / "dataset")
    folder = str(tmp_path / "dataset" / "sparse" / "0") if where == "sparse/0" else str(tmp_path / "model")
    if kind == "colmap":   # the source's own sparse/0 is binary; write the text model beside it
        folder = folder.replace(os.sep + "0", os.sep + "1") if where == "sparse/0" else folder
    warnings = write_colmap_text(rig, folder)
    assert warnings == []
    again = load_rig(os.path.join(folder, "cameras.txt"))
    assert again.format == "colmap-text" and again.path == folder
    assert_same_rig(rig, again, tol=1e-9)
    distinct = {(v.width, v.height, tuple(v.K.ravel()), None if v.distortion is None else tuple(v.distortion))
                for v in rig.views}
    lines = [line for line in open(os.path.join(folder, "cameras.txt")) if not line.startswith("#")]
    assert len(lines) == len(distinct)
    models = {line.split()[1] for line in lines}
    assert models <= {"PINHOLE", "OPENCV"}
    assert ("OPENCV" in models) == any(v.distortion is not None for v in rig.views)
    points = [line for line in open(os.path.join(folder, "points3D.txt")) if not line.startswith("#")]
    assert points == []
    names = [line.split()[-1] for line in open(os.path.join(folder, "images.txt"))
             if line.strip() and not line.startswith("#")]
    if where == "sparse/0" and kind != "nerf-synthetic":
        assert names[0] == os.path.basename(rig.views[0].image_path)   # relative to DATASET/images


def test_write_colmap_text_warns_about_skew_and_frames(tmp_path):
    rig = source_rig("neus2-dynamic", tmp_path / "d")
    rig.views[0].K = rig.views[0].K.copy()
    rig.views[0].K[0, 1] = 0.5
    warnings = write_colmap_text(rig, str(tmp_path / "m"))
    assert len(warnings) == 2 and "1 cameras have a skew" in warnings[0] and "2 frames" in warnings[1]
    again = load_rig(str(tmp_path / "m"))
    assert again.views[0].K[0, 1] == 0 and len(again) == len(rig) and not again.is_dynamic


def test_colmap_text_writer_then_reader_with_a_moved_camera(tmp_path):
    """A pose the writer turns into a quaternion near w = 0 (a half turn) reads back exactly."""
    rig = source_rig("instant-ngp", tmp_path)
    half_turn = look_at((0, 0, -4.0), (0, 0, 0), up=(0, 1, 0))
    half_turn[:3, :3] = np.diag([-1.0, 1.0, -1.0])
    rig.views[0].c2w = half_turn
    write_colmap_text(rig, str(tmp_path / "sparse"))
    again = load_rig(str(tmp_path / "sparse"))
    assert np.abs(again.views[0].c2w - half_turn).max() < 1e-12
