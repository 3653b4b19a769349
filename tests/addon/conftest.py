"""The add-on's tests: the `marble` fixture (the installed extension's modules, by the add-on's
layout), stand-in engines the job client is pointed at, and loading the add-on's bpy-free modules
without Blender. Test modules import the helpers below as `addon_conftest`."""
import contextlib
import importlib
import os
import shutil
import sys
import time
import types

import numpy as np
import pytest

from conftest import REPO, make_rig, ring_cameras

sys.modules.setdefault("addon_conftest", sys.modules[__name__])
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_PACKAGE = "marble_source"  # the repository's add-on, imported without Blender (bpy_free)
# The add-on's modules the tests use, by their name in the `marble` fixture.
MODULES = {"jobs": "addon.jobs", "rig": "addon.build.rig", "mesh": "addon.build.mesh",
           "region": "addon.build.region", "sequence": "addon.build.sequence", "blocks": "addon.build.blocks",
           "sequence_cache": "addon.build.sequence_cache",
           "textured": "addon.build.textured",
           "camera_math": "addon.camera_math", "export": "addon.export", "preferences": "addon.preferences",
           "engine_python": "addon.engine_python", "engine_install": "addon.engine_install",
           "sequence_io": "engine.io.sequence"}
PACKAGE = "bl_ext.user_default.marble"
# The preferences the tests set, put back after each test.
PREFERENCES = ("python", "job_root", "default_preset", "default_device", "preview_every", "wheel_folder",
               "install_python")


# ---------------------------------------------------------------------------------------------
# The installed extension

@pytest.fixture(scope="session")
def marble_package(tmp_path_factory):
    """Build the zip (tools.extension), install and enable it in the sandboxed Blender; yields the
    package. Installed once per session: installing again would reload the modules under the tests' feet.
    """
    import bpy
    from tools.extension import install_extension

    package, _ = install_extension(bpy, str(tmp_path_factory.mktemp("dist")))
    assert package == PACKAGE and PACKAGE in bpy.context.preferences.addons, "the extension did not enable"
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
    """A fresh empty scene with the extension enabled; gives the extension's modules (MODULES) and
    preferences."""
    import bpy

    _reset_job_state(marble_package)
    bpy.ops.wm.read_homefile(use_empty=True)  # never read_factory_settings: it disables add-ons
    prefs = bpy.context.preferences.addons[marble_package].preferences
    saved = {name: getattr(prefs, name) for name in PREFERENCES}
    ns = types.SimpleNamespace(package=marble_package, module=importlib.import_module(marble_package), prefs=prefs,
                               **{key: importlib.import_module(f"{marble_package}.{name}")
                                  for key, name in MODULES.items()})
    yield ns
    _reset_job_state(marble_package)
    if marble_package in bpy.context.preferences.addons:  # what the tests change, as it was
        prefs = bpy.context.preferences.addons[marble_package].preferences
        for name, value in saved.items():
            setattr(prefs, name, value)


# ---------------------------------------------------------------------------------------------
# The add-on's bpy-free modules, without Blender

@contextlib.contextmanager
def _without_blender():
    """`import bpy` and `import mathutils` fail inside (they may be loaded already: put back after)."""
    saved = {name: sys.modules.get(name) for name in ("bpy", "mathutils")}
    sys.modules.update({name: None for name in saved})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def bpy_free(name):
    """The repository's add-on module `name` (e.g. "addon.jobs.reducer") imported with bpy and mathutils
    unavailable, under a package of its own whose add-on packages are bare: their __init__ (which
    registers Blender classes) does not run. Fails if the module needs Blender."""
    parts = name.split(".")
    for i in range(len(parts)):  # the root and the add-on packages: bare
        package = ".".join([SOURCE_PACKAGE] + parts[:i])
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = [os.path.join(REPO, *parts[:i])]
            sys.modules[package] = module
    with _without_blender():
        return importlib.import_module(f"{SOURCE_PACKAGE}.{name}")


# ---------------------------------------------------------------------------------------------
# Stand-in engines: a temporary `engine` package the job client runs instead of the real one

def stand_in_engine(marble, folder, main, monkeypatch, io_modules=()):
    """Make `folder`/engine with `main` (a file beside this one) as its __main__.py and copies of
    engine.io's `io_modules`, and point the add-on at it."""
    engine = os.path.join(str(folder), "engine")
    os.makedirs(engine)
    open(os.path.join(engine, "__init__.py"), "w").close()
    shutil.copy(os.path.join(HERE, main), os.path.join(engine, "__main__.py"))
    if io_modules:
        os.makedirs(os.path.join(engine, "io"))
        for module in ("__init__.py", *io_modules):
            shutil.copy(os.path.join(REPO, "engine", "io", module), os.path.join(engine, "io", module))
    monkeypatch.setattr(marble.engine_python, "engine_root", lambda: str(folder))


@pytest.fixture
def fake_engine(marble, tmp_path, monkeypatch):
    """A scene with an imported rig, the job client pointed at the stand-in engine (stand_in_engine.py,
    behaviour chosen by $MARBLE_FAKE_MODE)."""
    import bpy

    stand_in_engine(marble, tmp_path / "fake_root", "stand_in_engine.py", monkeypatch)
    rig_path = make_rig(tmp_path, ring_cameras(count=3), name="fakerig")
    assert bpy.ops.marble.import_rig(filepath=rig_path) == {'FINISHED'}
    settings = bpy.context.scene.marble
    settings.job_dir = str(tmp_path / "job")
    marble.prefs.python = sys.executable
    marble.rig_path = rig_path
    marble.job_dir = str(tmp_path / "job")
    return marble


def run_ticks(jobs, until=None, timeout=30.0):
    """Call tick() as Blender's timer would until it returns None (or `until()` holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until is not None and until():
            return True
        if jobs.tick() is None:
            return until is None or until()
        time.sleep(0.01)
    raise AssertionError("the job did not finish in time")


def similarity(angle, axis, translation, scale):
    """4x4: a rotation by `angle` about `axis`, then per-axis `scale` (negative: a mirror), then `translation`."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * k @ k
    m = np.eye(4)
    m[:3, :3] = rotation @ np.diag(scale)
    m[:3, 3] = translation
    return m
