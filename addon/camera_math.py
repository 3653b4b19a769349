# SPDX-License-Identifier: GPL-3.0-or-later
"""Camera maths between a rig and Blender, both ways: K <-> lens, sensor, shift and pixel aspect, and
OpenCV camera-to-world <-> matrix_world. numpy only (no bpy): the scene builders and the rig export use
it, and tests check it without Blender."""
import math

import numpy as np

from ..engine.io.rig import OPENGL_TO_OPENCV

SENSOR_WIDTH = 36.0              # mm; any value works, the lens follows from it
# Camera data properties that camera_settings() decides, and keyframes for dynamic rigs.
LENS_KEYS = ("lens", "sensor_width", "sensor_height", "shift_x", "shift_y")
ANIMATED_LENS_KEYS = ("lens", "sensor_width", "shift_x", "shift_y")  # sensor_height: unused by a horizontal fit


def camera_settings(K, width, height, ycor=None):
    """Blender camera and render settings under which Blender projects exactly like K.

    Blender (BKE_camera_params_compute_viewplane, horizontal sensor fit) maps a camera-space point
    to the pixel u = F*X/Z + W/2 - shift_x*W and, counting rows down, v = F/ycor*Y/Z + H/2 +
    shift_y*W/ycor, with F = lens*W/sensor_width and ycor = pixel_aspect_y/pixel_aspect_x (OpenCV
    axes). Matching u = fx*X/Z + cx and v = fy*Y/Z + cy gives the values below, with ycor = fx/fy.
    The pixel aspect is the scene's, one for all cameras: `ycor` imposes another ratio (fx and the
    principal point stay exact, fy becomes fx/ycor). camera_intrinsics() is the inverse.
    """
    K = np.asarray(K, dtype=float)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (np.isfinite(K).all() and fx > 0 and fy > 0 and width > 0 and height > 0):
        raise ValueError(f"unusable intrinsics fx={fx:g} fy={fy:g} for a {width}x{height} image")
    ycor = fx / fy if ycor is None else float(ycor)
    # Blender keeps both pixel aspects >= 1; only their ratio matters.
    aspect_x, aspect_y = (1.0, ycor) if ycor >= 1.0 else (1.0 / ycor, 1.0)
    if max(aspect_x, aspect_y) > 200.0:
        raise ValueError(f"fx/fy = {ycor:g} is beyond Blender's pixel aspect range (1/200 to 200)")
    sensor_width = SENSOR_WIDTH
    lens = fx * sensor_width / width
    if lens < 1.0:  # Blender's minimum focal length: widen the sensor instead (same projection)
        sensor_width *= 1.0 / lens
        lens = 1.0
    return {
        "lens": lens,
        "sensor_width": sensor_width,
        "sensor_height": sensor_width * ycor * height / width,
        "shift_x": (0.5 * width - cx) / width,
        "shift_y": (cy - 0.5 * height) * ycor / width,
        "resolution_x": int(width),
        "resolution_y": int(height),
        "pixel_aspect_x": aspect_x,
        "pixel_aspect_y": aspect_y,
    }


def camera_intrinsics(cam, width, height, pixel_aspect_x=1.0, pixel_aspect_y=1.0):
    """K (3x3, pixels, pixel centres at +0.5) of Blender camera data `cam` rendering `width` x `height`
    pixels with the given pixel aspect: the inverse of camera_settings(), for every sensor fit.

    As in BKE_camera_params_compute_viewplane: the fit (AUTO: horizontal when aspect_x*W >=
    aspect_y*H) picks viewfac = W or ycor*H; the sensor size is sensor_height for a vertical fit and
    sensor_width otherwise (AUTO included); F = lens/sensor*viewfac, fx = F, fy = F/ycor,
    cx = W/2 - shift_x*viewfac, cy = H/2 + shift_y*viewfac/ycor.
    """
    if cam.type != 'PERSP':
        raise ValueError(f"camera '{cam.name}' is {cam.type.lower()}: only perspective cameras have a K")
    width, height = float(width), float(height)
    ycor = pixel_aspect_y / pixel_aspect_x
    fit = cam.sensor_fit
    sensor = cam.sensor_height if fit == 'VERTICAL' else cam.sensor_width
    if fit == 'AUTO':
        fit = 'HORIZONTAL' if pixel_aspect_x * width >= pixel_aspect_y * height else 'VERTICAL'
    viewfac = width if fit == 'HORIZONTAL' else ycor * height
    f = cam.lens / sensor * viewfac
    return np.array([[f, 0.0, 0.5 * width - cam.shift_x * viewfac],
                     [0.0, f / ycor, 0.5 * height + cam.shift_y * viewfac / ycor],
                     [0.0, 0.0, 1.0]])


def settings_match(cam, K, width, height, ycor=None):
    """True when `cam`'s lens, sensor and shift are still what camera_settings(K, width, height, ycor)
    gives (the camera was not edited since it was made from K), to float32 precision."""
    if cam.type != 'PERSP' or cam.sensor_fit != 'HORIZONTAL':
        return False
    try:
        s = camera_settings(K, width, height, ycor)
    except ValueError:
        return False
    return (math.isclose(cam.lens, s["lens"], rel_tol=1e-6)
            and math.isclose(cam.sensor_width, s["sensor_width"], rel_tol=1e-6)
            and abs(cam.shift_x - s["shift_x"]) <= 1e-6 and abs(cam.shift_y - s["shift_y"]) <= 1e-6)


def blender_matrix(c2w):
    """Blender's camera matrix_world (OpenGL axes: looks down -z, y up; a 4x4 array) from an OpenCV
    camera-to-world."""
    return np.asarray(c2w, dtype=float) @ OPENGL_TO_OPENCV


def opencv_c2w(matrix_world):
    """OpenCV camera-to-world from a Blender camera's matrix_world (the inverse of blender_matrix).

    Blender renders through the normalised matrix (object scale does not zoom a camera), so the
    axes are normalised here too.
    """
    m = np.array(matrix_world, dtype=float)
    m[:3, :3] /= np.linalg.norm(m[:3, :3], axis=0)
    return m @ OPENGL_TO_OPENCV
