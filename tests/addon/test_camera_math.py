"""addon/camera_math.py without Blender: K -> lens, sensor, shift and pixel aspect and back, and the
OpenCV <-> Blender camera matrices. (test_build_rig*.py check the same against Blender's own projection.)"""
import types

import numpy as np
import pytest

from addon_conftest import bpy_free
from conftest import random_c2w

camera_math = bpy_free("addon.camera_math")


def camera(settings, fit='HORIZONTAL'):
    """Camera data with the attributes camera_intrinsics reads, set as build.rig sets them."""
    return types.SimpleNamespace(name="cam", type='PERSP', sensor_fit=fit,
                                 **{key: settings[key] for key in camera_math.LENS_KEYS})


@pytest.mark.parametrize("fx, fy, cx, cy", [(500.0, 500.0, 320.0, 240.0), (812.5, 790.0, 301.25, 255.5),
                                            (12.0, 12.0, 320.0, 240.0)])  # the last: lens below 1 mm
def test_settings_and_intrinsics_are_inverse(fx, fy, cx, cy):
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    s = camera_math.camera_settings(K, 640, 480)
    assert s["lens"] >= 1.0 and (s["resolution_x"], s["resolution_y"]) == (640, 480)
    assert min(s["pixel_aspect_x"], s["pixel_aspect_y"]) == 1.0
    assert s["pixel_aspect_y"] / s["pixel_aspect_x"] == pytest.approx(fx / fy)
    cam = camera(s)
    back = camera_math.camera_intrinsics(cam, 640, 480, s["pixel_aspect_x"], s["pixel_aspect_y"])
    assert np.allclose(back, K, rtol=1e-12, atol=1e-9)
    assert camera_math.settings_match(cam, K, 640, 480)
    cam.shift_x += 1e-3  # edited since: the stored K no longer describes it
    assert not camera_math.settings_match(cam, K, 640, 480)


def test_vertical_fit_intrinsics():
    cam = types.SimpleNamespace(name="cam", type='PERSP', sensor_fit='VERTICAL', lens=50.0, sensor_width=36.0,
                                sensor_height=24.0, shift_x=0.0, shift_y=0.0)
    K = camera_math.camera_intrinsics(cam, 600, 400)
    assert K[0, 0] == pytest.approx(50.0 / 24.0 * 400) and (K[0, 2], K[1, 2]) == (300.0, 200.0)
    assert not camera_math.settings_match(cam, K, 600, 400)  # Marble's cameras fit horizontally


def test_unusable_intrinsics_are_refused():
    with pytest.raises(ValueError, match="unusable intrinsics"):
        camera_math.camera_settings(np.diag([0.0, 10.0, 1.0]), 64, 48)
    with pytest.raises(ValueError, match="pixel aspect"):
        camera_math.camera_settings(np.diag([1000.0, 1.0, 1.0]), 64, 48)
    ortho = types.SimpleNamespace(name="top", type='ORTHO')
    with pytest.raises(ValueError, match="only perspective"):
        camera_math.camera_intrinsics(ortho, 64, 48)


def test_camera_matrices_are_inverse():
    rng = np.random.default_rng(3)
    for _ in range(5):
        c2w = random_c2w(rng)
        world = camera_math.blender_matrix(c2w)
        assert np.allclose(world[:3, 2], -c2w[:3, 2]) and np.allclose(world[:3, 1], -c2w[:3, 1])  # -z forward, y up
        scaled = world.copy()
        scaled[:3, :3] *= 2.5  # object scale does not zoom a camera
        assert np.allclose(camera_math.opencv_c2w(scaled), c2w)
