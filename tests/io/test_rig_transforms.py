"""transforms.json reading and writing with known cameras (no Blender)."""
import json
import math
import os

import numpy as np
import pytest
from conftest import look_at, make_rig, write_png

from engine.io.rig import OPENGL_TO_OPENCV, RigError, load_rig, write_transforms
from engine.data import project


def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def test_camera_angle_and_opengl_pose(tmp_path):
    write_png(str(tmp_path / "a.png"), 80, 60, rgba=True)
    c2w_gl = np.eye(4)
    c2w_gl[:3, 3] = [0, 0, 4]  # OpenGL camera at z=4 looking down -z at the origin
    path = write_json(tmp_path / "transforms.json",
                      {"camera_angle_x": 2 * math.atan(40 / 100.0),
                       "frames": [{"file_path": "./a", "transform_matrix": c2w_gl.tolist()}]})
    rig = load_rig(str(tmp_path))
    view = rig.views[0]
    assert (view.width, view.height) == (80, 60)  # from the PNG header, extension added
    assert np.allclose(view.K, [[100, 0, 40], [0, 100, 30], [0, 0, 1]])
    assert np.allclose(view.c2w, c2w_gl @ OPENGL_TO_OPENCV)
    # The origin projects to the principal point, a point up in the world (+y) to a smaller row.
    px, depth = project(view, np.array([[0, 0, 0], [0, 0.4, 0]]))
    assert np.allclose(px[0], [40, 30]) and np.isclose(depth[0], 4)
    assert px[1, 1] < 30 and np.isclose(px[1, 0], 40)


def test_instant_ngp_intrinsics_overrides_and_distortion(tmp_path):
    for name in ("a.png", "b.png"):
        write_png(str(tmp_path / name), 64, 48)
    pose = np.eye(4).tolist()
    path = write_json(tmp_path / "transforms.json", {
        "fl_x": 70, "fl_y": 72, "cx": 30.5, "cy": 25, "w": 64, "h": 48, "k1": 0.1, "p2": -0.01,
        "aabb_scale": 4,
        "frames": [{"file_path": "a.png", "transform_matrix": pose},
                   {"file_path": "b.png", "transform_matrix": pose, "fl_x": 90, "k1": 0.0, "p2": 0.0}]})
    rig = load_rig(path)
    a, b = rig.views
    assert np.allclose(a.K, [[70, 0, 30.5], [0, 72, 25], [0, 0, 1]])
    assert np.allclose(a.distortion, [0.1, 0, 0, -0.01])
    assert b.K[0, 0] == 90 and b.distortion is None
    assert rig.meta["aabb_scale"] == 4


def test_missing_images_are_skipped_with_a_counted_warning(tmp_path):
    write_png(str(tmp_path / "a.png"), 16, 16)
    frames = [{"file_path": n, "transform_matrix": np.eye(4).tolist()} for n in ("a.png", "b.png", "c.png")]
    rig = load_rig(write_json(tmp_path / "transforms.json", {"fl_x": 20, "frames": frames}))
    assert len(rig.views) == 1
    assert len(rig.warnings) == 1 and "2 of 3 frames" in rig.warnings[0] and "b.png" in rig.warnings[0]


def test_round_trip_through_the_writer(tmp_path):
    cams = []
    for i, (w, h) in enumerate([(64, 48), (48, 64)]):
        c2w = look_at(np.array([3.0 * math.cos(i), 3.0 * math.sin(i), 1.0]), np.zeros(3))
        cams.append({"K": [[55 + i, 0, w / 2 + 3], [0, 57, h / 2 - 2], [0, 0, 1]], "c2w": c2w, "width": w,
                     "height": h})
    path = make_rig(tmp_path, cams, name="round")
    rig = load_rig(path)
    again = str(tmp_path / "round" / "again.json")
    write_transforms(rig, again)
    rig2 = load_rig(again)
    for v1, v2, cam in zip(rig.views, rig2.views, cams):
        assert np.allclose(v1.K, cam["K"], atol=1e-9) and np.allclose(v1.c2w, cam["c2w"], atol=1e-9)
        assert np.allclose(v2.K, v1.K, atol=1e-9) and np.allclose(v2.c2w, v1.c2w, atol=1e-9)
        assert v2.image_path == v1.image_path


BAD = {
    "malformed": ("{\"frames\": [", "malformed JSON"),
    "no frames": ({"fl_x": 10}, "'frames'"),
    "shape": ({"fl_x": 10, "frames": [{"file_path": "a.png", "transform_matrix": [[1, 0], [0, 1]]}]},
              "must be 4x4"),
    "nan": ({"fl_x": 10, "frames": [{"file_path": "a.png",
                                     "transform_matrix": [[float("nan"), 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                          [0, 0, 0, 1]]}]}, "NaN"),
    "singular": ({"fl_x": 10, "frames": [{"file_path": "a.png", "transform_matrix": np.zeros((4, 4)).tolist()}]},
                 "not a rotation"),
    "zero focal": ({"fl_x": 0, "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]},
                   "focal length"),
    "no focal": ({"frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}, "focal length"),
    "all missing": ({"fl_x": 10, "frames": [{"file_path": "gone.png", "transform_matrix": np.eye(4).tolist()}]},
                    "no usable views"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_the_file_and_the_problem(tmp_path, case):
    content, expected = BAD[case]
    write_png(str(tmp_path / "a.png"), 8, 8)
    path = tmp_path / "transforms.json"
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content).replace("NaN", "NaN"))
    with pytest.raises(RigError) as err:
        load_rig(str(path))
    assert str(path) in str(err.value) and expected in str(err.value)
    if case not in ("malformed", "no frames", "all missing"):
        assert "frames[0]" in str(err.value)


def test_a_path_that_does_not_exist(tmp_path):
    with pytest.raises(RigError, match="no such file"):
        load_rig(str(tmp_path / "nope.json"))
    with pytest.raises(RigError, match="no camera rig found: looked for transforms.json") as err:
        load_rig(str(tmp_path))
    assert str(tmp_path) in str(err.value)
