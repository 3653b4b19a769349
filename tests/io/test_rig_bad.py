"""Bad input to every reader: a RigError whose message names the file and the entry (frames[i],
camera id, image id, world_mat_i, the key) and says what is wrong."""
import json
import os

import numpy as np
import pytest
from rig_files import (sample_cameras, write_colmap_binary_files, write_colmap_text_files, write_idr_npz,
                       write_instant_ngp, write_nerf_synthetic, write_neus2, write_png)

from engine.io.rig import RigError, load_rig

POSE = np.eye(4).tolist()


def expect(path, *fragments, load=None):
    with pytest.raises(RigError) as err:
        load_rig(str(load or path))
    message = str(err.value)
    for fragment in (str(path),) + fragments:
        assert fragment in message, (fragment, message)
    return message


# ---------------------------------------------------------------------------------------------
# transforms.json (the LEAD's cases for malformed JSON, shapes, NaN, singular and zero focal
# lengths are in test_rig_transforms.py)

def frame(**extra):
    return dict({"file_path": "a.png", "transform_matrix": POSE}, **extra)


TRANSFORMS = {
    "reflection": ({"fl_x": 10, "frames": [frame(transform_matrix=np.diag([1.0, 1, -1, 1]).tolist())]},
                   "frames[0]", "reflection"),
    "scaled rotation": ({"fl_x": 10, "frames": [frame(transform_matrix=np.diag([2.0, 2, 2, 1]).tolist())]},
                        "frames[0]", "not a rotation"),
    "last row": ({"fl_x": 10, "frames": [frame(), frame(transform_matrix=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                                          [0, 0, 1, 1]])]},
                 "frames[1]", "last row"),
    "negative focal": ({"fl_x": 10, "frames": [frame(), frame(fl_x=-5)]}, "frames[1]", "focal length"),
    "zero angle": ({"camera_angle_x": 0, "frames": [frame()]}, "frames[0]", "camera_angle_x"),
    "text number": ({"fl_x": "100", "frames": [frame()]}, "'fl_x' must be a number"),
    "infinite": ({"fl_x": 10, "cx": float("inf"), "frames": [frame()]}, "'cx'"),
    "bad size": ({"fl_x": 10, "w": 10.5, "h": 8, "frames": [frame()]}, "frames[0]", "positive integers"),
    "words for a matrix": ({"fl_x": 10, "frames": [frame(transform_matrix=[["a"] * 4] * 4)]},
                           "frames[0]", "not a matrix of numbers"),
    "intrinsic shape": ({"frames": [frame(intrinsic_matrix=[[1, 0], [0, 1]])]}, "frames[0]",
                        "'intrinsic_matrix' must be"),
    "intrinsic nan": ({"frames": [frame(intrinsic_matrix=[[float("nan"), 0, 4], [0, 10, 4], [0, 0, 1]])]},
                      "frames[0]", "NaN"),
    "intrinsic lower triangle": ({"frames": [frame(intrinsic_matrix=[[10, 0, 4], [2, 10, 4], [0, 0, 1]])]},
                                 "frames[0]", "upper triangular"),
    "fractional frame": ({"fl_x": 10, "frames": [frame(frame=1.5)]}, "frames[0]", "'frame' must be an integer"),
    "bad camera": ({"fl_x": 10, "frames": [frame(camera={"id": 1})]}, "frames[0]", "'camera' must be a name"),
    "no transform": ({"fl_x": 10, "frames": [frame(), {"file_path": "a.png"}]}, "frames[1]",
                     "'file_path' and 'transform_matrix'"),
    "file_path type": ({"fl_x": 10, "frames": [frame(file_path=3)]}, "frames[0]", "'file_path' must be a string"),
    "missing mask": ({"fl_x": 10, "frames": [frame(mask_path="gone.png")]}, "frames[0]", "gone.png"),
    "normalization": ({"fl_x": 10, "normalization": np.diag([1.0, 2, 3, 1]).tolist(), "frames": [frame()]},
                      "'normalization'", "not a rotation"),
    "normalization shape": ({"fl_x": 10, "normalization": [1, 2], "frames": [frame()]}, "'normalization'",
                            "must be 4x4"),
    "neus2 n2w": ({"from_na": True, "fl_x": 10, "n2w": np.zeros((4, 4)).tolist(), "frames": [frame()]},
                  "'n2w'"),
    "neus2 scale": ({"from_na": True, "fl_x": 10, "scale": 0, "frames": [frame()]}, "'scale' must be positive"),
    "neus2 offset": ({"from_na": True, "fl_x": 10, "offset": [0.5, 0.5], "frames": [frame()]}, "'offset'"),
    "neus2 aabb": ({"from_na": True, "fl_x": 10, "aabb": [1, 2], "frames": [frame()]}, "'aabb'"),
    "not an object": ([1, 2, 3], "expected an object with a list 'frames'"),
    "fisheye": ({"fl_x": 10, "camera_model": "OPENCV_FISHEYE", "frames": [frame()]}, "frames[0]",
                "camera_model OPENCV_FISHEYE is not supported"),
}


@pytest.mark.parametrize("case", sorted(TRANSFORMS))
def test_bad_transforms(tmp_path, case):
    content, *fragments = TRANSFORMS[case]
    write_png(str(tmp_path / "a.png"), 8, 8)
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(content))
    expect(path, *fragments)


def test_binary_garbage_as_json(tmp_path):
    path = tmp_path / "transforms.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    expect(path, "not a text file")


def test_a_bad_split_file_is_named_when_its_sibling_is_loaded(tmp_path):
    cams = sample_cameras(2)
    for cam in cams:
        cam["K"] = np.array([[60.0, 0, cam["width"] / 2], [0, 60.0, cam["height"] / 2], [0, 0, 1]])
        cam["width"], cam["height"] = 64, 48
        cam["K"][:2, 2] = (32, 24)
    cams[1]["split"] = "val"
    folder = write_nerf_synthetic(tmp_path, cams)
    bad = os.path.join(folder, "transforms_val.json")
    with open(bad, "w") as f:
        f.write('{"camera_angle_x": 0.5, "frames": [')
    expect(bad, "malformed JSON", load=os.path.join(folder, "transforms_train.json"))


def test_neus2_single_frame_file_with_a_bad_matrix(tmp_path):
    path = write_neus2(tmp_path, sample_cameras(2), name="transform_000007.json")
    data = json.load(open(path))
    data["frames"][1]["intrinsic_matrix"] = [[0, 0, 4, 0], [0, 10, 4, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    json.dump(data, open(path, "w"))
    expect(path, "frames[1]", "focal length")


# ---------------------------------------------------------------------------------------------
# COLMAP text

def colmap_text(tmp_path, cameras_txt=None, images_txt=None):
    folder = write_colmap_text_files(tmp_path / "d", sample_cameras(2), layout="flat")
    if cameras_txt is not None:
        (tmp_path / "d" / "cameras.txt").write_text(cameras_txt)
    if images_txt is not None:
        (tmp_path / "d" / "images.txt").write_text(images_txt)
    return folder


IMAGE = "1 1 0 0 0 0 0 0 {cam} cam_000.png\n\n"
COLMAP_TEXT = {
    "unknown model": ("1 PINHOLE 64 48 60 60 32 24\n2 OPENCV_FISHEYE 64 48 60 60 32 24 0 0 0 0\n", None,
                      "cameras.txt", "camera 2", "OPENCV_FISHEYE"),
    "made-up model": ("7 BANANA 64 48 60\n", None, "cameras.txt", "camera 7", "BANANA"),
    "parameter count": ("1 PINHOLE 64 48 60 60 32\n", None, "cameras.txt", "camera 1", "needs 4 parameters"),
    "zero focal": ("1 SIMPLE_PINHOLE 64 48 0 32 24\n", None, "camera 1", "focal length"),
    "nan": ("1 PINHOLE 64 48 nan 60 32 24\n", None, "camera 1", "NaN"),
    "size": ("1 PINHOLE 0 48 60 60 32 24\n", None, "camera 1", "not positive"),
    "short line": ("1 PINHOLE 64\n", None, "cameras.txt: line 1", "CAMERA_ID MODEL"),
    "camera id": ("one PINHOLE 64 48 60 60 32 24\n", None, "line 1", "'one' is not an integer"),
    "unknown camera": ("1 PINHOLE 64 48 60 60 32 24\n", IMAGE.format(cam=9), "images.txt", "image 1",
                       "camera 9"),
    "zero quaternion": ("1 PINHOLE 64 48 60 60 32 24\n", "# c\n5 0 0 0 0 0 0 0 1 cam_000.png\n\n",
                        "images.txt: line 2: image 5", "unit quaternion"),
    "nan translation": ("1 PINHOLE 64 48 60 60 32 24\n", "3 1 0 0 0 nan 0 0 1 cam_000.png\n\n", "image 3", "NaN"),
    "image line": ("1 PINHOLE 64 48 60 60 32 24\n", "3 1 0 0 0 0 0 1 cam_000.png\n\n", "images.txt: line 1",
                   "IMAGE_ID QW"),
    "twice": ("1 PINHOLE 64 48 60 60 32 24\n", IMAGE.format(cam=1) * 2, "image 1", "appears twice"),
    "all missing": ("1 PINHOLE 64 48 60 60 32 24\n", "1 1 0 0 0 0 0 0 1 gone.png\n\n", "images.txt",
                    "no usable views", "gone.png"),
    "no images": ("1 PINHOLE 64 48 60 60 32 24\n", "# nothing\n", "images.txt", "no images"),
}


@pytest.mark.parametrize("case", sorted(COLMAP_TEXT))
def test_bad_colmap_text(tmp_path, case):
    cameras_txt, images_txt, *fragments = COLMAP_TEXT[case]
    folder = colmap_text(tmp_path, cameras_txt, images_txt)
    expect(folder, *fragments)


def test_colmap_model_without_images_file(tmp_path):
    folder = colmap_text(tmp_path)
    os.remove(os.path.join(folder, "images.txt"))
    expect(os.path.join(folder, "cameras.txt"), "needs both cameras.txt and images.txt")
    expect(folder, "no camera rig found")


# ---------------------------------------------------------------------------------------------
# COLMAP binary

def patch_camera_model(path, model_id):
    data = bytearray(open(path, "rb").read())
    data[12:16] = int(model_id).to_bytes(4, "little", signed=True)   # first camera: after count (8) and id (4)
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("model_id,fragment", [(6, "FULL_OPENCV"), (5, "OPENCV_FISHEYE"), (99, "unknown camera model id 99")])
def test_bad_colmap_binary_model(tmp_path, model_id, fragment):
    folder = write_colmap_binary_files(tmp_path, sample_cameras(1))
    cameras = os.path.join(folder, "sparse", "0", "cameras.bin")
    patch_camera_model(cameras, model_id)
    expect(cameras, "camera 1", fragment, load=folder)


def test_truncated_colmap_binary(tmp_path):
    folder = write_colmap_binary_files(tmp_path, sample_cameras(3))
    images = os.path.join(folder, "sparse", "0", "images.bin")
    data = open(images, "rb").read()
    open(images, "wb").write(data[:-30])
    expect(images, "image 3", "ends early", load=folder)
    open(images, "wb").write(b"")
    expect(images, "image count", "ends early", load=folder)


# ---------------------------------------------------------------------------------------------
# IDR / NeuS npz

def idr(tmp_path, **changes):
    path = write_idr_npz(tmp_path, sample_cameras(3))
    arrays = dict(np.load(path))
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(path, **arrays)
    return path


IDR = {
    "shape": ({"world_mat_1": np.eye(3)}, "world_mat_1 must be 4x4"),
    "nan": ({"world_mat_2": np.full((4, 4), np.nan)}, "world_mat_2 contains NaN"),
    "singular": ({"world_mat_0": np.diag([1.0, 1, 0, 1])}, "world_mat_0 @ scale_mat_0", "singular"),
    "missing": ({"world_mat_2": None, "world_mat_inv_2": None}, "world_mat_2 is missing", "000002.png"),
    "scale_mat": ({"scale_mat_1": np.diag([1.0, 2, 3, 1])}, "scale_mat_1", "not a rotation"),
    "scale_mat missing": ({"scale_mat_2": None}, "scale_mat_2 is missing"),
    "not a camera file": ({"world_mat_0": None}, "no world_mat_0"),
    "text": ({"world_mat_0": np.array(["a", "b"])}, "world_mat_0 is not a matrix of numbers"),
}


@pytest.mark.parametrize("case", sorted(IDR))
def test_bad_idr(tmp_path, case):
    changes, *fragments = IDR[case]
    path = idr(tmp_path, **changes)
    expect(path, *fragments)


def test_idr_files_and_folders(tmp_path):
    bad = tmp_path / "cameras_sphere.npz"
    bad.write_text("not a zip")
    expect(bad, "not a readable numpy .npz file")
    path = write_idr_npz(tmp_path / "x", sample_cameras(2))
    for name in os.listdir(tmp_path / "x" / "image"):
        os.remove(tmp_path / "x" / "image" / name)
    expect(path, "no PNG or JPEG images")
    os.rmdir(tmp_path / "x" / "image")
    expect(path, "no image/")


# ---------------------------------------------------------------------------------------------
# Paths

def test_paths_that_are_not_rigs(tmp_path):
    expect(tmp_path / "nope", "no such file or folder")
    expect(tmp_path, "no camera rig found")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    expect(notes, "not a camera rig file")
    with pytest.raises(RigError, match="no rig path"):
        load_rig("")
    write_instant_ngp(tmp_path / "two", sample_cameras(1), name="transforms_a.json")
    write_instant_ngp(tmp_path / "two", sample_cameras(1), name="transforms_b.json")
    expect(tmp_path / "two", "several transforms*.json")
    one = tmp_path / "one"
    write_instant_ngp(one, sample_cameras(1), name="transforms_mine.json")
    assert len(load_rig(str(one))) == 1
