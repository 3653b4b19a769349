"""engine/io is what Blender's Python imports: every module there (and engine.config, the add-on's
source of presets and ranges, and engine.pins, what Install Engine installs) must load with the
standard library and numpy alone. Each import runs in a fresh Python in which torch, bpy and the rest
of the engine's heavy packages cannot be imported."""
import json
import os
import pkgutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FORBIDDEN = ("torch", "bpy", "mathutils", "triton", "mcubes", "PIL", "scipy", "trimesh")

# A finder in front of every other: importing a forbidden package fails as if it were not installed.
PROBE = r"""
import importlib, importlib.abc, json, sys
FORBIDDEN = set(json.loads(sys.argv[1]))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (refused: engine/io must not need it)", name=name)
        return None
sys.meta_path.insert(0, Refuse())
importlib.import_module(sys.argv[2])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)))
"""


def io_modules():
    import engine.io
    names = ["engine.io", "engine.config", "engine.pins"]
    for info in pkgutil.walk_packages(engine.io.__path__, "engine.io."):
        names.append(info.name)
    return names


def test_the_list_covers_the_rig_readers_and_the_contract_modules():
    names = io_modules()
    for expected in ("engine.io.protocol", "engine.io.ply", "engine.io.sequence", "engine.io.region",
                     "engine.io.rig", "engine.io.rig.colmap", "engine.io.rig.transforms"):
        assert expected in names


@pytest.mark.parametrize("module", io_modules())
def test_imports_without_torch_or_blender(module):
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(FORBIDDEN), module], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{module} needs a package Blender's Python lacks:\n{proc.stderr[-2000:]}"
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def test_the_probe_catches_a_module_that_imports_torch():
    """The check itself can fail: engine.nn.encoding imports torch and is refused."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(FORBIDDEN), "engine.nn.encoding"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "refused" in proc.stderr
