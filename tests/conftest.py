"""Shared test setup: a sandboxed Blender user folder, markers by folder, and small file writers
(tests/addon/conftest.py installs the extension).

The environment is redirected into a temporary folder *before* anything imports bpy: Blender reads
BLENDER_USER_RESOURCES once, when the module starts, and the tests must not touch the user's own
Blender configuration, extensions or caches. `python3 build.py test` sets these already; running
pytest directly gets a sandbox of its own here.
"""
import atexit
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
# pytest imports this file as `tests.conftest` (importlib mode); the tests' `from conftest import ...`
# must get this same module, not a second copy that would run the sandbox again.
sys.modules.setdefault("conftest", sys.modules[__name__])

from tools.env import has_nvidia_gpu  # noqa: E402  (standard library only)
from tools.sandbox import fill_in  # noqa: E402

assert "bpy" not in sys.modules, "bpy was imported before tests/conftest.py could sandbox Blender's folders"
_sandbox = fill_in()
if _sandbox:
    atexit.register(shutil.rmtree, _sandbox, ignore_errors=True)
HAS_GPU = has_nvidia_gpu()
# Without an NVIDIA GPU, Triton's interpreter runs the GPU kernels on CPU tensors, so CI tests them too.
# (Read when a kernel is defined: it must be set before engine.nn.hashgrid_triton is imported.)
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from rig_files import look_at, write_png  # noqa: E402,F401  (shared with the rig tests)



# ---------------------------------------------------------------------------------------------
# Markers

# Markers by folder: `-m "not bpy"`, `-m "not torch"`.
FOLDER_MARKERS = {"addon": "bpy", "demo": "bpy", "engine": "torch"}


def pytest_collection_modifyitems(config, items):
    tests = os.path.join(REPO, "tests")
    for item in items:
        relative = os.path.relpath(str(item.path), tests).split(os.sep)
        mark = FOLDER_MARKERS.get(relative[0]) if len(relative) > 1 else None
        if mark:
            item.add_marker(mark)
        if not HAS_GPU and item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA CUDA GPU (nvidia-smi finds none)"))


# ---------------------------------------------------------------------------------------------
# Small files

def make_rig(folder, cameras, name=None, normalization=None):
    """Write tiny PNGs and a transforms.json (via engine.io.rig.write_transforms) into `folder`.

    `cameras`: list of dicts with K (3x3), c2w (4x4 OpenCV), width, height and optional image name,
    distortion, camera and frame. Returns the transforms.json path; the rig's name is the folder's name.
    """
    from engine.io.rig import Rig, View, write_transforms

    folder = os.path.join(str(folder), name) if name else str(folder)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    views = []
    for i, cam in enumerate(cameras):
        image = os.path.join(folder, "images", cam.get("image", f"view_{i:03d}") + ".png")
        write_png(image, cam["width"], cam["height"])
        views.append(View(image_path=image, width=cam["width"], height=cam["height"],
                          K=np.asarray(cam["K"], dtype=float), c2w=np.asarray(cam["c2w"], dtype=float),
                          distortion=cam.get("distortion"), camera_id=cam.get("camera", ""),
                          frame=cam.get("frame", 0)))
    path = os.path.join(folder, "transforms.json")
    write_transforms(Rig(name=os.path.basename(folder), path=path, views=views, normalization=normalization), path)
    return path


def ring_cameras(count=4, width=64, height=48, focal=60.0, radius=3.0):
    """`count` cameras on a circle around the origin, looking at it."""
    K = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    cams = []
    for i in range(count):
        a = 2.0 * np.pi * i / count
        eye = (radius * np.cos(a), radius * np.sin(a), 0.8)
        cams.append({"K": K, "c2w": look_at(eye, (0.0, 0.0, 0.0)), "width": width, "height": height,
                     "image": f"cam_{i:02d}"})
    return cams


def random_c2w(rng, spread=4.0):
    """A random OpenCV camera-to-world (proper rotation, translation in [-spread, spread]^3)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = q, rng.uniform(-spread, spread, size=3)
    return c2w


def points_in_view(rng, K, c2w, width, height, count=200, depth=(0.3, 25.0)):
    """Random 3D points in front of a camera: over the image and a margin around it, many depths."""
    pixels = rng.uniform([-0.3 * width, -0.3 * height], [1.3 * width, 1.3 * height], size=(count, 2))
    depths = rng.uniform(depth[0], depth[1], size=(count, 1))
    rays = (np.linalg.inv(K) @ np.c_[pixels, np.ones(count)].T).T
    return (c2w[:3, :3] @ (rays * depths).T).T + c2w[:3, 3]


def project_opencv(K, c2w, points):
    """Pixel coordinates (x right, y down, pixel centres at +0.5) through K and an OpenCV c2w."""
    w2c = np.linalg.inv(c2w)
    cam = (w2c[:3, :3] @ np.asarray(points).T).T + w2c[:3, 3]
    assert (cam[:, 2] > 0).all()
    uv = (np.asarray(K) @ cam.T).T
    return uv[:, :2] / uv[:, 2:3]


def project_blender(obj, points, scene=None):
    """Pixel coordinates (x right, y down, origin at the image's top-left corner) through Blender's own
    camera: Object.calc_matrix_camera with the scene's resolution and pixel aspect, and matrix_world."""
    import bpy

    scene = scene or bpy.context.scene
    render = scene.render
    depsgraph = bpy.context.evaluated_depsgraph_get()
    width = render.resolution_x * render.resolution_percentage / 100.0
    height = render.resolution_y * render.resolution_percentage / 100.0
    projection = np.array(obj.calc_matrix_camera(
        depsgraph, x=int(width), y=int(height), scale_x=render.pixel_aspect_x, scale_y=render.pixel_aspect_y))
    view = np.array(obj.matrix_world.inverted())
    clip = (projection @ view @ np.c_[points, np.ones(len(points))].T).T
    ndc = clip[:, :3] / clip[:, 3:4]
    return np.stack([(ndc[:, 0] + 1.0) * 0.5 * width, (1.0 - ndc[:, 1]) * 0.5 * height], axis=1)


def write_ply(path, vertices, faces, colors=None):
    """A PLY exactly as the engine writes it (engine.io.ply.write_ply); colours as uint8, default grey."""
    from engine.io.ply import write_ply as engine_write_ply

    colors = np.full((len(vertices), 3), 200, dtype=np.uint8) if colors is None else np.asarray(colors)
    engine_write_ply(str(path), vertices, faces, colors.astype(np.float64) / 255.0)
    return str(path)


def icosphere(radius=1.0):
    """12 vertices and 20 triangles of an icosahedron (outward facing)."""
    t = (1.0 + 5.0 ** 0.5) / 2.0
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
                  [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=float)
    v *= radius / np.linalg.norm(v[0])
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                  [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
                  [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    return v, f
