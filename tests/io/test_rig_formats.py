"""Every rig reader on files built from known cameras (tests/rig_files.py): the same K, pose,
distortion, size and projections of random points, plus each format's own conventions."""
import json
import math
import os
import shutil

import numpy as np
import pytest
from rig_files import (EXAMPLE_N2W as N2W, colmap_model_cameras, look_at, nerf_synthetic_cameras, project,
                       sample_cameras, skewed_cameras, write_colmap_binary_files, write_colmap_text_files,
                       write_dynamic_transforms, write_idr_npz, write_instant_ngp, write_nerf_synthetic,
                       write_neus2, write_neus2_dynamic, write_png)

from engine.io.rig import RigError, decompose_projection, load_rig

RNG = np.random.default_rng(7)
POINTS = RNG.uniform(-0.8, 0.8, size=(50, 3))   # near the origin every sample camera looks at


def assert_cameras(rig, cams, k_tol=1e-9, pose_tol=1e-9, px_tol=1e-6, distortion=True, sizes=True):
    """The rig's views are `cams` in order: K (relative), c2w, size, distortion, projections."""
    assert len(rig.views) == len(cams)
    for view, cam in zip(rig.views, cams):
        K = np.asarray(cam["K"], dtype=float)
        assert np.abs(view.K - K).max() <= k_tol * np.abs(K).max(), (view.image_path, view.K, K)
        assert np.abs(view.c2w - cam["c2w"]).max() <= pose_tol * max(1.0, np.abs(cam["c2w"]).max()), view.image_path
        if sizes:
            assert (view.width, view.height) == (cam["width"], cam["height"])
        if distortion:
            expected = cam.get("distortion")
            if expected is None:
                assert view.distortion is None
            else:
                assert np.allclose(view.distortion, expected, rtol=0, atol=1e-15)
        # Projections of random points through the loaded camera equal those through the original.
        assert np.abs(project(view.K, view.c2w, POINTS) - project(K, cam["c2w"], POINTS)).max() <= px_tol
        assert os.path.isfile(view.image_path)


# ---------------------------------------------------------------------------------------------
# NeRF synthetic

def test_nerf_synthetic_split_files_are_read_together(tmp_path):
    cams = nerf_synthetic_cameras()
    folder = write_nerf_synthetic(tmp_path / "lego", cams)
    for path in (folder, os.path.join(folder, "transforms_val.json"), os.path.join(folder, "transforms_test.json")):
        rig = load_rig(path)
        assert rig.format == "nerf-synthetic" and rig.name == "lego"
        order = sorted(range(len(cams)), key=lambda i: ("train", "val", "test").index(cams[i]["split"]))
        assert_cameras(rig, [cams[i] for i in order], k_tol=1e-12)
        assert [v.split for v in rig.views] == [cams[i]["split"] for i in order]
        assert all(v.image_path.endswith(".png") and v.mask_path is None for v in rig.views)
        assert not rig.is_dynamic and rig.normalization is None and not rig.warnings
    data = json.load(open(os.path.join(folder, "transforms_train.json")))
    assert "camera_angle_y" in data and "fl_x" not in data and not data["frames"][0]["file_path"].endswith(".png")


def test_nerf_synthetic_cannot_express_off_centre_principal_points(tmp_path):
    cams = nerf_synthetic_cameras()
    cams[0]["K"] = cams[0]["K"].copy()
    cams[0]["K"][0, 2] += 1
    with pytest.raises(ValueError, match="principal point"):
        write_nerf_synthetic(tmp_path, cams)


# ---------------------------------------------------------------------------------------------
# instant-ngp

def test_instant_ngp_per_frame_intrinsics_and_distortion(tmp_path):
    cams = sample_cameras(6, distortion=True)
    path = write_instant_ngp(tmp_path / "scan", cams, extra={"aabb_scale": 8})
    assert "fl_x" in json.load(open(path))["frames"][0]   # cameras differ: intrinsics per frame
    rig = load_rig(str(tmp_path / "scan"))
    assert rig.format == "instant-ngp" and rig.meta["aabb_scale"] == 8 and rig.path == path
    assert_cameras(rig, cams, k_tol=0, pose_tol=0)
    assert [v.camera_id for v in rig.views] == [c["image"] for c in cams]
    assert all(v.frame == 0 and v.split == "" for v in rig.views) and not rig.is_dynamic


def test_instant_ngp_shared_intrinsics_and_size_from_the_image_header(tmp_path):
    cams = sample_cameras(4)
    for cam in cams:
        cam.update(K=cams[0]["K"], width=64, height=48)
    path = write_instant_ngp(tmp_path, cams)
    data = json.load(open(path))
    assert "fl_x" in data and "fl_x" not in data["frames"][0]
    del data["w"], data["h"]   # read from the PNG headers instead
    json.dump(data, open(path, "w"))
    assert_cameras(load_rig(path), cams, k_tol=0, pose_tol=0)


def test_intrinsic_keys_resolution_order(tmp_path):
    """fl_* beat camera angles; a per-frame intrinsic_matrix beats shared focal lengths; a frame's
    own fl_x beats its intrinsic_matrix; cx/cy default to the image centre."""
    write_png(str(tmp_path / "a.png"), 40, 30)
    pose = np.eye(4).tolist()
    K = [[50.0, 0.5, 21.0], [0.0, 52.0, 14.0], [0.0, 0.0, 1.0]]
    frames = [{"file_path": "a.png", "transform_matrix": pose},
              {"file_path": "a.png", "transform_matrix": pose, "intrinsic_matrix": K},
              {"file_path": "a.png", "transform_matrix": pose, "intrinsic_matrix": K, "fl_x": 70},
              {"file_path": "a.png", "transform_matrix": pose, "camera_angle_x": 2 * math.atan(20 / 40)}]
    json.dump({"camera_angle_x": 1.0, "fl_x": 60, "frames": frames}, open(tmp_path / "t.json", "w"))
    a, b, c, d = load_rig(str(tmp_path / "t.json")).views
    assert np.allclose(a.K, [[60, 0, 20], [0, 60, 15], [0, 0, 1]])
    assert np.array_equal(b.K, K)
    assert np.allclose(c.K, [[70, 0, 20], [0, 70, 15], [0, 0, 1]])
    assert np.allclose(d.K, [[60, 0, 20], [0, 60, 15], [0, 0, 1]])   # the shared fl_x still beats the angle


def test_nerfstudio_pinhole_model_and_ignored_k3(tmp_path):
    cams = sample_cameras(3, distortion=True)
    path = write_instant_ngp(tmp_path, cams, extra={"camera_model": "OPENCV", "k3": 0.01})
    rig = load_rig(path)
    assert_cameras(rig, cams, k_tol=0, pose_tol=0)
    assert len(rig.warnings) == 1 and "3 views have k3/k4" in rig.warnings[0]


# ---------------------------------------------------------------------------------------------
# NeuS2

def test_neus2_opencv_poses_with_n2w_move_into_world(tmp_path):
    cams = skewed_cameras()
    path = write_neus2(tmp_path / "dtu", cams, n2w=N2W)
    data = json.load(open(path))
    assert data["from_na"] is True and np.asarray(data["frames"][0]["intrinsic_matrix"]).shape == (4, 4)
    rig = load_rig(path)
    assert rig.format == "neus2" and rig.meta["scale"] == 0.5
    assert_cameras(rig, cams, k_tol=0, pose_tol=1e-12)
    # scale 0.5 and offset 0.5 map NeuS's unit sphere onto NeuS2's unit cube: the region is n2w itself.
    assert np.allclose(rig.normalization, N2W, rtol=0, atol=1e-12)
    # A camera position in NeuS2's own cube coordinates: p_file * scale + offset, p_world = n2w p_file.
    for view, frame in zip(rig.views, data["frames"]):
        p_file = np.asarray(frame["transform_matrix"])[:3, 3]
        ngp = p_file * data["scale"] + np.asarray(data["offset"])
        back = (ngp - np.asarray(data["offset"])) / data["scale"]
        assert np.allclose(N2W[:3, :3] @ back + N2W[:3, 3], view.c2w[:3, 3], atol=1e-12)


def test_neus2_scale_and_offset_give_the_region_in_file_coordinates(tmp_path):
    cams = sample_cameras(4)
    offset = (0.5, 0.375, 0.625)
    path = write_neus2(tmp_path, cams, scale=0.25, offset=offset)
    rig = load_rig(path)
    assert_cameras(rig, cams, k_tol=0, pose_tol=0)   # no n2w: the file's frame is the world
    # The sphere inscribed in NeuS2's cube [0, 1]^3: centre (0.5 - offset) / scale, radius 0.5 / scale.
    expected = np.eye(4)
    expected[:3, :3] *= 2.0
    expected[:3, 3] = (0.5 - np.asarray(offset)) / 0.25
    assert np.allclose(rig.normalization, expected)
    # Its centre maps to the cube's centre and a point on it to the cube's face.
    centre, radius = rig.normalization[:3, 3], rig.normalization[0, 0]
    assert np.allclose(centre * 0.25 + np.asarray(offset), 0.5)
    assert np.isclose((centre[0] + radius) * 0.25 + offset[0], 1.0)


def test_neus2_defaults_and_aabb(tmp_path):
    cams = sample_cameras(2)
    path = write_neus2(tmp_path, cams)
    data = json.load(open(path))
    del data["scale"], data["offset"]
    data["aabb_scale"] = 2
    json.dump(data, open(path, "w"))
    rig = load_rig(path)   # NeuS2's defaults: scale 0.33, offset 0.5; the cube grows with aabb_scale
    assert np.allclose(rig.normalization, np.diag([2 * 0.5 / 0.33] * 3 + [1]))
    data["aabb"] = [[-1, -2, 0], [3, 2, 2]]
    json.dump(data, open(path, "w"))
    rig = load_rig(path)
    assert np.allclose(rig.normalization[:3, 3], [1, 0, 1]) and np.isclose(rig.normalization[0, 0], 4.0)


def test_neus2_from_na_false_reads_opengl_and_warns(tmp_path):
    cams = sample_cameras(3)
    rig = load_rig(write_neus2(tmp_path, cams, from_na=False))
    assert_cameras(rig, cams, k_tol=0, pose_tol=0)
    assert len(rig.warnings) == 1 and "'from_na' is False" in rig.warnings[0] and "NeuS2 itself" in rig.warnings[0]


@pytest.mark.parametrize("naming", ["folder", "neus2"])
def test_neus2_dynamic_per_frame_files(tmp_path, naming):
    base = sample_cameras(3)
    cams = []
    for frame in (280, 281, 282):
        for i, cam in enumerate(base):
            moved = dict(cam, frame=frame, camera=f"{i:03d}")
            moved["c2w"] = cam["c2w"].copy()
            moved["c2w"][2, 3] += 0.01 * (frame - 280)
            cams.append(moved)
    folder = write_neus2_dynamic(tmp_path / "dance", cams, naming=naming, n2w=N2W)
    assert sorted(os.listdir(os.path.join(folder, "train"))) == [f"transform_{f:06d}.json" for f in (280, 281, 282)]
    for path in (folder, os.path.join(folder, "train")):
        rig = load_rig(path)
        assert rig.format == "neus2" and rig.name == "dance" and rig.is_dynamic and rig.frames == [280, 281, 282]
        assert_cameras(rig, cams, k_tol=0, pose_tol=1e-12)
        assert [v.frame for v in rig.views] == [c["frame"] for c in cams]
        expected = [c["camera"] if naming == "folder" else f"image_c_{c['camera']}" for c in cams]
        assert [v.camera_id for v in rig.views] == expected
        assert rig.camera_ids == expected[:3]
        assert all(v.split == "train" for v in rig.views)
        assert np.allclose(rig.normalization, N2W)
    one = load_rig(os.path.join(folder, "train", "transform_000281.json"))
    assert [v.frame for v in one.views] == [281] * 3 and not one.is_dynamic


def test_neus2_dynamic_with_from_na_false_warns_once(tmp_path):
    cams = [dict(cam, frame=f, camera=cam["image"]) for f in (0, 1, 2) for cam in sample_cameras(2)]
    rig = load_rig(write_neus2_dynamic(tmp_path, cams, split="", from_na=False))
    assert_cameras(rig, cams, k_tol=0, pose_tol=0)
    assert rig.frames == [0, 1, 2] and [v.split for v in rig.views] == [""] * 6
    assert len(rig.warnings) == 1 and "from_na" in rig.warnings[0]


# ---------------------------------------------------------------------------------------------
# Dynamic transforms.json

def test_dynamic_transforms_keep_frame_and_camera(tmp_path):
    cams = []
    for frame in range(3):
        for i, cam in enumerate(sample_cameras(4, distortion=True)):
            cams.append(dict(cam, frame=frame, camera=f"rig_cam_{i}"))
    path = write_dynamic_transforms(tmp_path / "perf", cams)
    rig = load_rig(path)
    assert rig.is_dynamic and rig.frames == [0, 1, 2]
    assert rig.camera_ids == [f"rig_cam_{i}" for i in range(4)]
    assert [(v.frame, v.camera_id) for v in rig.views] == [(c["frame"], c["camera"]) for c in cams]
    assert_cameras(rig, cams, k_tol=0, pose_tol=0)


# ---------------------------------------------------------------------------------------------
# COLMAP

@pytest.mark.parametrize("writer,fmt", [(write_colmap_text_files, "colmap-text"),
                                        (write_colmap_binary_files, "colmap-binary")])
@pytest.mark.parametrize("layout", ["sparse/0", "sparse", "flat"])
def test_colmap_models_in_every_folder_form(tmp_path, writer, fmt, layout):
    cams = colmap_model_cameras()
    folder = writer(tmp_path / "garden", cams, layout=layout)
    model_dir = {"sparse/0": os.path.join(folder, "sparse", "0"), "sparse": os.path.join(folder, "sparse"),
                 "flat": folder}[layout]
    ext = "txt" if fmt == "colmap-text" else "bin"
    for path in {folder, model_dir, os.path.join(model_dir, f"images.{ext}")}:
        rig = load_rig(path)
        assert rig.format == fmt and rig.name == "garden" and rig.path == model_dir
        assert_cameras(rig, cams, k_tol=0, pose_tol=1e-12)
        assert [v.camera_id for v in rig.views] == [c["image"] for c in cams]
        assert all(os.path.dirname(v.image_path) == os.path.join(folder, "images") for v in rig.views)
        assert rig.meta["cameras"] == 6 and not rig.warnings


def test_colmap_pixel_convention_is_ours(tmp_path):
    """COLMAP puts the top-left pixel's centre at (0.5, 0.5), so cx = width / 2 is the image centre:
    a point on the optical axis projects to (cx, cy) unchanged."""
    cam = {"K": np.array([[100.0, 0, 32.0], [0, 100.0, 24.0], [0, 0, 1]]), "c2w": np.eye(4), "width": 64,
           "height": 48, "image": "a", "model": "PINHOLE"}
    rig = load_rig(write_colmap_text_files(tmp_path, [cam]))
    assert np.array_equal(rig.views[0].K, cam["K"])
    assert np.allclose(project(rig.views[0].K, rig.views[0].c2w, [[0, 0, 5.0]]), [[32.0, 24.0]])


def test_colmap_binary_wins_over_text_unless_a_text_file_is_chosen(tmp_path):
    cams = sample_cameras(3)
    write_colmap_text_files(tmp_path, cams)
    write_colmap_binary_files(tmp_path, cams)
    assert load_rig(str(tmp_path)).format == "colmap-binary"
    assert load_rig(str(tmp_path / "sparse" / "0" / "cameras.txt")).format == "colmap-text"


def test_colmap_images_beside_the_model_and_missing_ones(tmp_path):
    cams = sample_cameras(5)
    folder = write_colmap_text_files(tmp_path / "d", cams)
    model_dir = os.path.join(folder, "sparse", "0")
    images = os.path.join(folder, "images")
    for name in os.listdir(images):
        shutil.move(os.path.join(images, name), model_dir)
    os.rmdir(images)
    rig = load_rig(folder)
    assert all(os.path.dirname(v.image_path) == model_dir for v in rig.views)
    assert_cameras(rig, cams, pose_tol=1e-12)
    os.remove(os.path.join(model_dir, "cam_001.png"))
    os.remove(os.path.join(model_dir, "cam_003.png"))
    rig = load_rig(folder)
    assert [v.camera_id for v in rig.views] == ["cam_000", "cam_002", "cam_004"]
    assert len(rig.warnings) == 1 and "2 of 5 images skipped" in rig.warnings[0] and "cam_001.png" in rig.warnings[0]


# ---------------------------------------------------------------------------------------------
# IDR / NeuS npz

def test_idr_npz_decomposes_into_world_cameras_with_masks(tmp_path):
    cams = skewed_cameras(6)
    path = write_idr_npz(tmp_path / "scan24", cams, scale_mat=N2W)
    for where in (path, os.path.dirname(path)):
        rig = load_rig(where)
        assert rig.format == "idr" and rig.path == path and rig.name == "scan24"
        assert_cameras(rig, cams, k_tol=1e-9, pose_tol=1e-9)
        assert np.array_equal(rig.normalization, N2W)
        assert [os.path.basename(v.mask_path) for v in rig.views] == [f"{i:03d}.png" for i in range(6)]
        assert [v.camera_id for v in rig.views] == [f"{i:06d}" for i in range(6)]
        assert not rig.warnings   # skew of at most 0.012 * 64 px: below the 1 px warning
    rig = load_rig(write_idr_npz(tmp_path / "skewed", skewed_cameras(3, skew=0.1)))
    assert len(rig.warnings) == 1 and "skew (up to 14.40 px" in rig.warnings[0]   # 0.3 x 48


def test_idr_without_masks_extra_cameras_and_float32(tmp_path):
    cams = sample_cameras(4)
    path = write_idr_npz(tmp_path, cams, masks=False)
    data = dict(np.load(path))
    data = {k: v.astype(np.float32) for k, v in data.items()}   # real files are float32
    np.savez(path, **data)
    os.remove(os.path.join(tmp_path, "image", "000003.png"))
    rig = load_rig(path)
    assert_cameras(rig, cams[:3], k_tol=1e-6, pose_tol=1e-5, px_tol=1e-3)
    assert all(v.mask_path is None for v in rig.views)
    assert len(rig.warnings) == 1 and "1 of 4 cameras skipped" in rig.warnings[0]


def test_decomposition_of_scaled_and_negated_projections():
    cams = skewed_cameras(3)
    for cam in cams:
        w2c = np.linalg.inv(cam["c2w"])
        P = cam["K"] @ w2c[:3]
        for factor in (1.0, -3.0, 0.02):
            K, c2w = decompose_projection(factor * P)
            assert np.allclose(K, cam["K"], rtol=1e-12, atol=1e-12)
            assert np.allclose(c2w, cam["c2w"], rtol=0, atol=1e-12)
            assert np.isclose(np.linalg.det(c2w[:3, :3]), 1.0)
    with pytest.raises(RigError, match="singular"):
        decompose_projection(np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]))
