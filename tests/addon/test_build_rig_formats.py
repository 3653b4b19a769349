"""Exactness for every reader: files written by tests/rig_files.py from known cameras are imported with
marble.import_rig, and random 3D points projected through Blender's own camera (calc_matrix_camera
with the scene's resolution and pixel aspect, and matrix_world) land within 0.01 px of their
projection through the known K and c2w: landscape and portrait images, off-centre principal points
and fx != fy wherever the format can express them. Blender has one resolution and one pixel aspect
per scene, so each rig has views of one size and one fy/fx ratio (several rigs for several sizes).
Then bad input of every kind: reported, naming the file, and nothing half-built."""
import json
import os
import zlib

import bpy
import numpy as np
import pytest

import rig_files
from conftest import points_in_view, project_blender, project_opencv

TOLERANCE_PX = 0.01
SIZES = {"landscape": (96, 64), "portrait": (60, 100)}


def known_cameras(seed, width, height, count=5, ratio=1.07, centred=False, equal_focal=False,
                  distortion=False, models=None):
    """Cameras around a point, each with its own focal length and principal point, one fy/fx ratio."""
    rng = np.random.default_rng(seed)
    ratio = 1.0 if equal_focal else ratio
    cams = []
    for i in range(count):
        fx = float(rng.uniform(0.8, 1.4) * width)
        cx, cy = (width / 2, height / 2) if centred else (width / 2 + rng.uniform(-9, 9), height / 2 + rng.uniform(-9, 9))
        K = np.array([[fx, 0.0, cx], [0.0, fx * ratio, cy], [0.0, 0.0, 1.0]])
        a = 2 * np.pi * i / count + rng.uniform(-0.2, 0.2)
        eye = np.array([0.3, -0.2, 0.1]) + 3.5 * np.array([np.cos(a), np.sin(a), rng.uniform(0.1, 0.6)])
        cam = {"K": K, "c2w": rig_files.look_at(eye, rng.uniform(-0.3, 0.3, 3)), "width": width, "height": height,
               "image": f"shot_{i:03d}"}
        if distortion and i % 2:
            cam["distortion"] = np.array([0.03 * i, -0.01, 0.001, -0.0005])
        if models:
            cam["model"] = models[i % len(models)]
        cams.append(cam)
    return cams


def _nerf_synthetic(folder, width, height, seed):
    # One focal length for the whole capture (camera_angle_x, camera_angle_y for fy != fx), centred.
    cams = known_cameras(seed, width, height, centred=True)
    for i, cam in enumerate(cams):
        cam["K"] = cams[0]["K"].copy()
        cam["split"] = ("train", "train", "val", "test", "train")[i]
    path = rig_files.write_nerf_synthetic(folder, cams)
    return path, {f"r_{i}": cam for i, cam in enumerate(cams)}


def _instant_ngp(folder, width, height, seed):
    cams = known_cameras(seed, width, height, distortion=True)
    return rig_files.write_instant_ngp(folder, cams, extra={"aabb_scale": 4}), {c["image"]: c for c in cams}


def _neus2(folder, width, height, seed, from_na=True):
    cams = known_cameras(seed, width, height)
    return (rig_files.write_neus2(folder, cams, from_na=from_na, n2w=np.diag([2.0, 2.0, 2.0, 1.0])),
            {c["image"]: c for c in cams})


def _colmap(writer, models):
    def make(folder, width, height, seed):
        equal = any(m in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL") for m in models)
        cams = known_cameras(seed, width, height, equal_focal=equal, models=models)
        for i, cam in enumerate(cams):
            model = cam["model"]
            if model in ("SIMPLE_RADIAL", "RADIAL", "OPENCV"):
                k = [0.02 * (i + 1), -0.004 if model != "SIMPLE_RADIAL" else 0.0]
                p = [0.001, -0.002] if model == "OPENCV" else [0.0, 0.0]
                cam["distortion"] = np.array(k + p)
        return writer(folder, cams), {c["image"]: c for c in cams}
    return make


def _idr(folder, width, height, seed):
    cams = known_cameras(seed, width, height)
    scale_mat = np.array([[1.7, 0, 0, 0.3], [0, 1.7, 0, -0.2], [0, 0, 1.7, 0.1], [0, 0, 0, 1.0]])
    return rig_files.write_idr_npz(folder, cams, scale_mat=scale_mat), {f"{i:06d}": c for i, c in enumerate(cams)}


FORMATS = {
    "nerf-synthetic": _nerf_synthetic,
    "instant-ngp": _instant_ngp,
    "neus2": _neus2,
    "neus2-opengl": lambda *a: _neus2(*a, from_na=False),
    "colmap-text": _colmap(rig_files.write_colmap_text_files, ["PINHOLE", "OPENCV"]),
    "colmap-text-simple": _colmap(rig_files.write_colmap_text_files, ["SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"]),
    "colmap-binary": _colmap(rig_files.write_colmap_binary_files, ["PINHOLE", "OPENCV"]),
    "colmap-binary-simple": _colmap(rig_files.write_colmap_binary_files, ["SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"]),
    "idr": _idr,
}


def _check_projection(obj, cam, rng, where):
    points = points_in_view(rng, cam["K"], cam["c2w"], cam["width"], cam["height"], count=100)
    error = np.abs(project_blender(obj, points) - project_opencv(cam["K"], cam["c2w"], points)).max()
    assert error < TOLERANCE_PX, f"{where}: Blender and K/c2w disagree by {error:.5f} px"


@pytest.mark.parametrize("orientation", list(SIZES))
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_reader_projection_exact(marble, tmp_path, fmt, orientation):
    width, height = SIZES[orientation]
    seed = zlib.crc32(f"{fmt}-{orientation}".encode())
    path, known = FORMATS[fmt](str(tmp_path / "capture"), width, height, seed)
    assert bpy.ops.marble.import_rig(filepath=path) == {'FINISHED'}
    scene = bpy.context.scene
    assert (scene.render.resolution_x, scene.render.resolution_y) == (width, height)
    collection = scene.marble.rig_collection
    objects = marble.rig.rig_cameras(collection)
    assert sorted(o.name for o in objects) == sorted(known)
    rng = np.random.default_rng(seed)
    for obj in objects:
        cam = known[obj.name]
        _check_projection(obj, cam, rng, f"{fmt} {orientation} {obj.name}")
        # The raw K, size and distortion are kept on the camera.
        assert np.abs(np.array(obj.data["marble_K"]).reshape(3, 3) - cam["K"]).max() < 1e-6
        assert (obj.data["marble_width"], obj.data["marble_height"]) == (width, height)
        assert np.allclose(obj.data["marble_distortion"], cam.get("distortion", np.zeros(4)), atol=1e-9)
        assert obj.data.background_images[0].image is not None
    if fmt == "idr":  # scale_mat is the rig's normalisation: the region empty shows it
        region = scene.marble.region
        assert not region["marble_region_auto"]
        assert np.allclose(np.array(region.matrix_world)[:3, 3], [0.3, -0.2, 0.1], atol=1e-5)
        assert marble.region.sphere(region)[1] == pytest.approx(1.7, rel=1e-5)
    if fmt == "nerf-synthetic":
        assert bpy.data.objects["r_2"]["marble_split"] == "val"


def test_folder_import(marble, tmp_path):
    """A COLMAP folder (sparse/0 inside), given as the folder: the same as giving a model file."""
    cams = known_cameras(5, 96, 64, models=["PINHOLE"])
    folder = rig_files.write_colmap_text_files(str(tmp_path / "colmap"), cams)
    assert bpy.ops.marble.import_rig(filepath=folder) == {'FINISHED'}
    assert len(marble.rig.rig_cameras(bpy.data.collections["colmap"])) == 5
    # The file browser's way: a folder in `directory` and no file chosen.
    assert bpy.ops.marble.import_rig(filepath=folder + os.sep, directory=folder + os.sep) == {'FINISHED'}
    assert len(marble.rig.rig_cameras(bpy.data.collections["colmap.001"])) == 5


def test_background_images_off(marble, tmp_path):
    cams = known_cameras(6, 96, 64)
    path = rig_files.write_instant_ngp(str(tmp_path / "plain"), cams)
    assert bpy.ops.marble.import_rig(filepath=path, background_images=False) == {'FINISHED'}
    assert len(bpy.data.images) == 0
    assert all(len(c.background_images) == 0 for c in bpy.data.cameras)


def test_views_of_different_sizes_warn(marble, tmp_path, capsys):
    cams = known_cameras(7, 96, 64, count=2) + known_cameras(8, 60, 100, count=2)
    for i, cam in enumerate(cams):
        cam["image"] = f"mixed_{i}"
    path = rig_files.write_instant_ngp(str(tmp_path / "mixed"), cams)
    assert bpy.ops.marble.import_rig(filepath=path) == {'FINISHED'}
    assert "2 of 4 views differ in image size" in capsys.readouterr().out
    assert (bpy.context.scene.render.resolution_x, bpy.context.scene.render.resolution_y) == (96, 64)
    assert bpy.data.objects["mixed_3"].data["marble_width"] == 60


def test_views_with_different_fx_fy_warn(marble, tmp_path, capsys):
    """One pixel aspect per scene: the median fx/fy; the other cameras keep fx and the principal point
    exact, their fy becomes fx/ycor, and the warning says how many pixels that costs at most."""
    cams = known_cameras(17, 96, 64, count=3)
    for cam, ratio in zip(cams, (1.0, 1.05, 1.1)):
        cam["K"][1, 1] = cam["K"][0, 0] * ratio
    path = rig_files.write_instant_ngp(str(tmp_path / "aspect"), cams)
    assert bpy.ops.marble.import_rig(filepath=path) == {'FINISHED'}
    out = capsys.readouterr().out
    assert "fx/fy differs between views" in out and "2 of 3 cameras are off by up to" in out
    render = bpy.context.scene.render
    assert render.pixel_aspect_y / render.pixel_aspect_x == pytest.approx(1 / 1.05, rel=1e-6)  # fx/fy
    rng = np.random.default_rng(5)
    _check_projection(bpy.data.objects["shot_001"], cams[1], rng, "the median camera")
    worst = float(out.split("off by up to ")[1].split(" px")[0])
    for cam in (cams[0], cams[2]):
        obj = bpy.data.objects[cam["image"]]
        points = points_in_view(rng, cam["K"], cam["c2w"], 96, 64, count=100, depth=(1.0, 5.0))
        inside = np.all((project_opencv(cam["K"], cam["c2w"], points) >= 0)
                        & (project_opencv(cam["K"], cam["c2w"], points) <= [96, 64]), axis=1)
        error = np.abs(project_blender(obj, points[inside]) - project_opencv(cam["K"], cam["c2w"], points[inside]))
        assert error[:, 0].max() < TOLERANCE_PX  # fx and cx exact
        assert 0.05 < error[:, 1].max() <= worst * 1.001
        principal = cam["c2w"][:3, 3] + cam["c2w"][:3, 2] * 2.0  # on the optical axis: cx, cy exact
        assert np.abs(project_blender(obj, principal[None]) - cam["K"][:2, 2]).max() < TOLERANCE_PX


def test_missing_images_are_reported(marble, tmp_path, capsys):
    cams = known_cameras(9, 96, 64)
    path = rig_files.write_instant_ngp(str(tmp_path / "gaps"), cams)
    os.remove(os.path.join(str(tmp_path / "gaps"), "images", "shot_001.png"))
    assert bpy.ops.marble.import_rig(filepath=path) == {'FINISHED'}
    assert "1 of 5 frames skipped" in capsys.readouterr().out
    assert len(marble.rig.rig_cameras(bpy.data.collections["gaps"])) == 4


# ---------------------------------------------------------------------------------------------
# Dynamic rigs of both kinds

def dynamic_known(width=96, height=64, frames=(0, 1, 2)):
    base = known_cameras(11, width, height, count=3)
    cams = []
    for f in frames:
        for i, cam in enumerate(base):
            c = dict(cam, camera=f"rig{i}", frame=f)
            if i == 1:  # this one moves
                c2w = cam["c2w"].copy()
                c2w[:3, 3] += [0.1 * f, 0.0, 0.05 * f]
                c["c2w"] = c2w
            cams.append(c)
    return cams


@pytest.mark.parametrize("kind", ["transforms", "neus2-folder"])
def test_dynamic_reader_projection_exact(marble, tmp_path, kind):
    cams = dynamic_known()
    if kind == "transforms":
        path = rig_files.write_dynamic_transforms(str(tmp_path / "dyn"), cams)
    else:
        (tmp_path / "dyn" / "train").mkdir(parents=True)  # rig_files opens dyn/train/../images/...
        path = rig_files.write_neus2_dynamic(str(tmp_path / "dyn"), cams, naming="folder")
    assert bpy.ops.marble.import_rig(filepath=path) == {'FINISHED'}
    scene = bpy.context.scene
    objects = marble.rig.rig_cameras(scene.marble.rig_collection)
    assert sorted(o.name for o in objects) == ["rig0", "rig1", "rig2"]
    assert (scene.frame_start, scene.frame_end) == (0, 2)
    rng = np.random.default_rng(4)
    for cam in cams:
        scene.frame_set(cam["frame"])
        _check_projection(bpy.data.objects[cam["camera"]], cam, rng, f"{kind} {cam['camera']} frame {cam['frame']}")


# ---------------------------------------------------------------------------------------------
# Bad input: reported with the file and the entry, nothing half-built

def _state():
    return (len(bpy.data.collections), len(bpy.data.objects), len(bpy.data.cameras), len(bpy.data.images),
            len(bpy.data.actions), bpy.context.scene.marble.rig_path, bpy.context.scene.marble.region)


def _ngp(folder):
    return rig_files.write_instant_ngp(folder, known_cameras(12, 96, 64))


def _edit_json(path, change):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    change(data)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def _malformed_json(folder):
    path = _ngp(folder)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:len(text) // 2])
    return path, ["transforms.json", "malformed"]


def _nan(folder):
    def change(data):
        data["frames"][-1]["transform_matrix"][1][3] = float("nan")
    return _edit_json(_ngp(folder), change), ["transforms.json", "frames[4]", "NaN"]


def _zero_focal(folder):
    def change(data):
        data["frames"][2]["fl_x"] = 0.0
    return _edit_json(_ngp(folder), change), ["transforms.json", "frames[2]", "focal"]


def _wrong_shape(folder):
    def change(data):
        data["frames"][3]["transform_matrix"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    return _edit_json(_ngp(folder), change), ["transforms.json", "frames[3]", "4x4"]


def _singular(folder):
    def change(data):
        data["frames"][1]["transform_matrix"][0][:3] = [0.0, 0.0, 0.0]
    return _edit_json(_ngp(folder), change), ["transforms.json", "frames[1]", "rotation"]


def _unknown_model(folder):
    folder = rig_files.write_colmap_text_files(folder, known_cameras(13, 96, 64, models=["PINHOLE"]))
    cameras = os.path.join(folder, "sparse", "0", "cameras.txt")
    with open(cameras, encoding="utf-8") as f:
        text = f.read()
    with open(cameras, "w", encoding="utf-8") as f:
        f.write(text.replace(" PINHOLE ", " THIN_PRISM_FISHEYE "))
    return folder, ["cameras.txt", "THIN_PRISM_FISHEYE"]


def _truncated_binary(folder):
    folder = rig_files.write_colmap_binary_files(folder, known_cameras(14, 96, 64, models=["PINHOLE"]))
    images = os.path.join(folder, "sparse", "0", "images.bin")
    with open(images, "rb") as f:
        data = f.read()
    with open(images, "wb") as f:
        f.write(data[:len(data) - 40])
    return folder, ["images.bin"]


def _idr_nan(folder):
    path = rig_files.write_idr_npz(folder, known_cameras(15, 96, 64))
    arrays = dict(np.load(path))
    arrays["world_mat_2"][0, 0] = np.nan
    np.savez(path, **arrays)
    return path, ["cameras_sphere.npz", "world_mat_2"]


def _missing(folder):
    return os.path.join(folder, "nowhere", "transforms.json"), ["nowhere", "no such file"]


def _empty_folder(folder):
    os.makedirs(folder)
    return folder, ["no camera rig found"]


BAD = {"malformed-json": _malformed_json, "nan": _nan, "zero-focal": _zero_focal, "wrong-shape": _wrong_shape,
       "singular-rotation": _singular, "unknown-camera-model": _unknown_model,
       "truncated-binary": _truncated_binary, "idr-nan": _idr_nan, "missing-path": _missing,
       "empty-folder": _empty_folder}


@pytest.mark.parametrize("problem", list(BAD))
def test_bad_input_reported_nothing_built(marble, tmp_path, problem):
    # A rig imported before stays as it was.
    good = rig_files.write_instant_ngp(str(tmp_path / "good"), known_cameras(16, 96, 64, count=2))
    bpy.ops.marble.import_rig(filepath=good)
    before = _state()
    path, expected = BAD[problem](str(tmp_path / "bad"))
    with pytest.raises(RuntimeError) as info:
        bpy.ops.marble.import_rig(filepath=path)
    message = str(info.value)
    for part in expected:
        assert part.lower() in message.lower(), (part, message)
    assert _state() == before
    assert "bad" not in bpy.data.collections
