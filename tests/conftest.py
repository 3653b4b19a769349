"""Shared test setup: a sandboxed Blender user folder, the installed extension, and small file writers.

The environment is redirected into a temporary folder *before* anything imports bpy: Blender reads
BLENDER_USER_RESOURCES once, when the module starts, and the tests must not touch the user's own
Blender configuration, extensions or caches. `python3 build.py test` sets these already; running
pytest directly gets a sandbox of its own here.
"""
import atexit
import importlib
import os
import shutil
import sys
import tempfile
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANDBOX_VARS = {"HOME": "home", "XDG_CACHE_HOME": "cache", "XDG_CONFIG_HOME": "config",
                "XDG_DATA_HOME": "data", "BLENDER_USER_RESOURCES": "blender",
                "TORCHINDUCTOR_CACHE_DIR": "inductor"}


def _sandbox_environment():
    # Without BLENDER_USER_RESOURCES nobody sandboxed this run: redirect all of them (HOME included,
    # which is always set). Otherwise only fill in what the caller left unset.
    everything = "BLENDER_USER_RESOURCES" not in os.environ
    missing = [name for name in SANDBOX_VARS if everything or name not in os.environ]
    if not missing:
        return
    folder = tempfile.mkdtemp(prefix="marble-tests-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for name in missing:
        path = os.path.join(folder, SANDBOX_VARS[name])
        os.makedirs(path, exist_ok=True)
        os.environ[name] = path


assert "bpy" not in sys.modules, "bpy was imported before tests/conftest.py could sandbox Blender's folders"
_sandbox_environment()
# Without an NVIDIA GPU, Triton's interpreter runs the GPU kernels on CPU tensors, so CI tests them too.
# (Read when a kernel is defined: it must be set before engine.nn.hashgrid_triton is imported.)
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from rig_files import look_at, write_png  # noqa: E402,F401  (shared with the rig tests)

PACKAGE = "bl_ext.user_default.marble"


# ---------------------------------------------------------------------------------------------
# The installed extension

@pytest.fixture(scope="session")
def marble_package(tmp_path_factory):
    """Build the zip with build.py, install and enable it in the sandboxed Blender; yields the package.

    Installed once per session: installing again would reload the modules under the tests' feet.
    """
    import bpy
    import build

    zip_path = build.build_extension(str(tmp_path_factory.mktemp("dist")))
    if PACKAGE not in bpy.context.preferences.addons:
        result = bpy.ops.extensions.package_install_files(
            filepath=zip_path, repo="user_default", enable_on_install=True)
        assert result == {'FINISHED'}, result
    assert PACKAGE in bpy.context.preferences.addons, "the extension did not enable"
    yield PACKAGE
    jobs = sys.modules.get(PACKAGE + ".addon.jobs")
    if jobs is not None:
        jobs.shutdown()


def _reset_job_state(package):
    import bpy

    jobs = sys.modules.get(package + ".addon.jobs")
    if jobs is not None:
        jobs.shutdown(timeout=2.0)
    for group in ("marble_job", "marble_export"):
        state = getattr(bpy.context.window_manager, group, None)
        if state is not None:  # the window manager survives read_homefile, so its job state does too
            for name in state.bl_rna.properties.keys():
                if name not in ("rna_type", "name"):
                    state.property_unset(name)
    export_operator = getattr(bpy.types, "MARBLE_OT_export_rig", None)
    if export_operator is not None:
        export_operator.cancel_requested = export_operator.rendering = False


@pytest.fixture
def marble(marble_package):
    """A fresh empty scene with the extension enabled; gives the extension's modules and preferences."""
    import bpy

    _reset_job_state(marble_package)
    bpy.ops.wm.read_homefile(use_empty=True)  # never read_factory_settings: it disables add-ons
    prefs = bpy.context.preferences.addons[marble_package].preferences
    python = prefs.python
    ns = types.SimpleNamespace(
        package=marble_package,
        module=importlib.import_module(marble_package),
        jobs=importlib.import_module(marble_package + ".addon.jobs"),
        scene=importlib.import_module(marble_package + ".addon.scene"),
        region=importlib.import_module(marble_package + ".addon.region"),
        export=importlib.import_module(marble_package + ".addon.export"),
        preferences=importlib.import_module(marble_package + ".addon.preferences"),
        prefs=prefs,
    )
    yield ns
    _reset_job_state(marble_package)
    if marble_package in bpy.context.preferences.addons:
        bpy.context.preferences.addons[marble_package].preferences.python = python


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
