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
import struct
import sys
import tempfile
import types
import zlib

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
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

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
    state = getattr(bpy.context.window_manager, "marble_job", None)
    if state is not None:  # the window manager survives read_homefile, so its job state does too
        for name in state.bl_rna.properties.keys():
            if name not in ("rna_type", "name"):
                state.property_unset(name)


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
        preferences=importlib.import_module(marble_package + ".addon.preferences"),
        prefs=prefs,
    )
    yield ns
    _reset_job_state(marble_package)
    if marble_package in bpy.context.preferences.addons:
        bpy.context.preferences.addons[marble_package].preferences.python = python


# ---------------------------------------------------------------------------------------------
# Small files

def write_png(path, width, height, rgba=False):
    """A flat grey PNG of the given size (numpy + zlib; the rig reader only reads its header)."""
    channels = 4 if rgba else 3
    rows = np.full((height, 1 + width * channels), 128, dtype=np.uint8)
    rows[:, 0] = 0  # filter type "none" for every row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 6 if rgba else 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b""))
    return str(path)


def look_at(eye, target, up=(0.0, 0.0, 1.0)):
    """OpenCV camera-to-world (x right, y down, z forward) looking from `eye` at `target`."""
    eye, target, up = (np.asarray(v, dtype=float) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(z, (0.0, 1.0, 0.0))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def make_rig(folder, cameras, name=None):
    """Write tiny PNGs and a transforms.json (via engine.rig.write_transforms) into `folder`.

    `cameras`: list of dicts with K (3x3), c2w (4x4 OpenCV), width, height and optional image name.
    Returns the transforms.json path; the rig's name is the folder's name.
    """
    from engine.rig import Rig, View, write_transforms

    folder = os.path.join(str(folder), name) if name else str(folder)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    views = []
    for i, cam in enumerate(cameras):
        image = os.path.join(folder, "images", cam.get("image", f"view_{i:03d}") + ".png")
        write_png(image, cam["width"], cam["height"])
        views.append(View(image_path=image, width=cam["width"], height=cam["height"],
                          K=np.asarray(cam["K"], dtype=float), c2w=np.asarray(cam["c2w"], dtype=float),
                          distortion=cam.get("distortion")))
    path = os.path.join(folder, "transforms.json")
    write_transforms(Rig(name=os.path.basename(folder), path=path, views=views), path)
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


def write_ply(path, vertices, faces, colors=None):
    """A PLY exactly as the engine writes it (engine.plyio.write_ply); colours as uint8, default grey."""
    from engine.plyio import write_ply as engine_write_ply

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
