"""build.py and the build tools (tools/): standard library only, build.py only dispatches, pins in one
place, the sandbox, the shared-data lookup; .ci/run and the README's first commands."""
import ast
import glob
import os
import re
import stat
import subprocess
import sys

import pytest

from engine import pins
from tools import REPO, env, sandbox, shared_data


def imported_modules(path, top_level_only=False):
    tree = ast.parse(open(path, encoding="utf-8").read())
    imported = set()
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    return imported


def test_standard_library_only():
    # build.py and tools/ run with a bare python3: the standard library and tools/ itself; build.py
    # also reaches bench.registry (its own test checks that the registry's modules are stdlib-only).
    stdlib = set(sys.stdlib_module_names)
    own = {"build": {"tools", "bench"}, "tools": {"tools"}}
    # The one exception: engine/pins.py, the pins' one place (standard library data, which
    # tests/io/test_io_imports.py checks with the modules Blender's Python imports).
    for path in [os.path.join(REPO, "build.py")] + sorted(glob.glob(os.path.join(REPO, "tools", "*.py"))):
        allowed = own["build" if path.endswith("build.py") else "tools"]
        imported = {name.split(".")[0] for name in imported_modules(path) if name != "engine.pins"}
        assert imported <= stdlib | allowed, (path, imported - stdlib - allowed)
    imported = {name.split(".")[0] for name in imported_modules(os.path.join(REPO, "engine", "pins.py"))}
    assert imported <= stdlib, imported - stdlib


def test_build_py_only_dispatches():
    with open(os.path.join(REPO, "build.py"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 200
    import build
    assert set(build.COMMANDS) == {"setup", "test", "demo", "extension", "bench"}


def test_importing_build_loads_neither_torch_nor_numpy():
    code = ("import sys, build; from bench import registry; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'bpy')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_pins_in_one_place():
    # What the issue names is pinned, with the versions the platform needs.
    assert {"torch", "bpy", "numpy", "trimesh", "PyMCubes", "pytest"} <= set(env.PINS)
    assert env.PINS["torch"] == "2.13.0" and env.PINS["bpy"] == "5.0.1"
    assert int(env.PINS["numpy"].split(".")[0]) < 2  # bpy 5.0 needs numpy < 2
    assert env.requirements() == [f"{k}=={v}" for k, v in env.PINS.items()]
    # The .venv gets the engine's pins (what Install Engine puts in the user's environment) and the
    # developer's; the engine's own environment needs neither Blender nor pytest.
    assert env.PINS == {**pins.ENGINE_PINS, **pins.DEVELOPER_PINS}
    assert not {"bpy", "pytest", "hypothesis"} & set(pins.ENGINE_PINS)
    assert {"torch", "numpy", "PyMCubes", "pillow", "triton"} <= set(pins.ENGINE_PINS)
    triton = f"triton=={pins.ENGINE_PINS['triton']}"
    assert triton in pins.requirements(pins.ENGINE_PINS, platform="linux")
    assert triton not in pins.requirements(pins.ENGINE_PINS, platform="win32")
    # Each version written once, in engine/pins.py; none in the build tools or the add-on.
    with open(os.path.join(REPO, "engine", "pins.py"), encoding="utf-8") as f:
        pins_text = f.read()
    text = "".join(open(path, encoding="utf-8").read()
                   for path in [os.path.join(REPO, "build.py")] + glob.glob(os.path.join(REPO, "tools", "*.py"))
                   + glob.glob(os.path.join(REPO, "addon", "*.py")))
    for version in env.PINS.values():
        assert pins_text.count(f'"{version}"') == 1 and text.count(f'"{version}"') == 0, version
    # The stamp changes with the pins, the Python and the torch variant.
    base = env._stamp("3.11.7", "cpu")
    assert base == env._stamp("3.11.7", "cpu")
    assert len({base, env._stamp("3.11.8", "cpu"), env._stamp("3.11.7", "cuda")}) == 3


def test_venv_python_is_the_venv_not_its_base():
    python = env.venv_python()
    assert python.startswith(os.path.join(REPO, ".venv") + os.sep)
    assert os.path.isfile(python)


def test_setup_is_recorded():
    # build.py test ran setup first; running pytest directly may precede it.
    stamp = os.path.join(env.VENV, env.STAMP_FILE)
    if not os.path.exists(stamp):
        pytest.skip("setup has not recorded its stamp yet (pytest run outside build.py)")
    import json
    with open(stamp, encoding="utf-8") as f:
        recorded = json.load(f)
    assert recorded["pins"] == env.PINS
    assert env.check_packages() == []


def test_isolated_env(tmp_path):
    isolated = sandbox.isolated_env(str(tmp_path), base={"PATH": "/bin", "HOME": "/root"})
    assert isolated["PATH"] == "/bin" and isolated["PYTHONDONTWRITEBYTECODE"] == "1"
    for name in sandbox.SANDBOX_DIRS:
        assert isolated[name].startswith(str(tmp_path) + os.sep) and os.path.isdir(isolated[name])
    # This very test run is sandboxed the same way (build.py test or tests/conftest.py).
    assert not os.environ["BLENDER_USER_RESOURCES"].startswith(os.path.expanduser("~/.config"))


def test_the_conftest_sandbox_fills_in_what_is_missing(tmp_path):
    # Nobody sandboxed (no BLENDER_USER_RESOURCES): everything is redirected, HOME included.
    environ = {"HOME": "/root", "PATH": "/bin"}
    folder = sandbox.fill_in(environ)
    try:
        assert set(sandbox.SANDBOX_DIRS) <= set(environ) and environ["HOME"].startswith(folder + os.sep)
        # A caller's sandbox is kept; only what it left unset is filled in.
        given = {"BLENDER_USER_RESOURCES": str(tmp_path), "HOME": str(tmp_path)}
        again = sandbox.fill_in(given)
        assert given["BLENDER_USER_RESOURCES"] == given["HOME"] == str(tmp_path)
        assert given["XDG_CACHE_HOME"].startswith(again + os.sep)
        assert sandbox.fill_in(given) is None  # nothing missing any more
    finally:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(again, ignore_errors=True)


def test_enter_sandbox_keeps_a_callers_sandbox(monkeypatch, tmp_path):
    monkeypatch.setenv("BLENDER_USER_RESOURCES", str(tmp_path))
    assert sandbox.enter_sandbox("marble-test-") is None
    monkeypatch.delenv("BLENDER_USER_RESOURCES")
    for name in sandbox.SANDBOX_DIRS:
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    folder = sandbox.enter_sandbox("marble-test-")
    try:
        assert os.environ["BLENDER_USER_RESOURCES"] == os.path.join(folder, "blender")
    finally:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


def test_one_shared_data_lookup(monkeypatch, tmp_path):
    (tmp_path / "dtu_scan24").mkdir()
    monkeypatch.setenv(shared_data.SHARED_DATA_ENV, str(tmp_path))
    assert shared_data.shared_data_candidates() == [str(tmp_path)]  # the variable alone, when set
    assert shared_data.shared_data_dir() == str(tmp_path)
    assert shared_data.shared_data_dir("dtu_scan24") == str(tmp_path)
    assert shared_data.shared_data_dir("fox") is None
    monkeypatch.delenv(shared_data.SHARED_DATA_ENV)
    candidates = shared_data.shared_data_candidates()
    assert os.path.join(os.path.dirname(REPO), "shared", "data") in candidates
    # Nobody else keeps a list of their own.
    for folder in ("tools", "bench", "demo"):
        for path in glob.glob(os.path.join(REPO, folder, "*.py")):
            if not path.endswith("shared_data.py"):
                text = open(path, encoding="utf-8").read()
                assert '"shared", "data"' not in text and "/work/shared" not in text, path


@pytest.mark.parametrize("args, code", [([], 2), (["--help"], 0), (["no-such-command"], 2)])
def test_command_line_usage(args, code):
    result = subprocess.run([sys.executable, os.path.join(REPO, "build.py"), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == code
    for command in ("setup", "test", "demo", "extension", "bench"):
        assert f"build.py {command}" in result.stdout


def test_bench_rejects_unknown_names():
    result = subprocess.run([sys.executable, os.path.join(REPO, "build.py"), "bench", "no-such-bench"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown benchmark" in result.stderr


def test_ci_runs_the_readme_test_command():
    path = os.path.join(REPO, ".ci", "run")
    assert os.stat(path).st_mode & stat.S_IXUSR
    script = open(path, encoding="utf-8").read()
    assert script.startswith("#!/usr/bin/env bash")
    assert re.search(r"^(exec )?python3 build\.py test\b", script, flags=re.M)


def test_readme_starts_with_the_two_commands():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    first_block = re.search(r"```[a-z]*\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.strip() for line in first_block.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[:2] == ["python3 build.py demo", "python3 build.py test"]
    headings = re.findall(r"^## (.*)$", text, flags=re.M)
    assert headings[0] == "Two commands"  # the first section a reader meets
    assert text.index("python3 build.py demo") < text.index("## " + headings[1])


def test_gitignore_covers_outputs():
    lines = open(os.path.join(REPO, ".gitignore"), encoding="utf-8").read().split()
    for entry in (".venv/", "dist/", "demo/out/", "__pycache__/"):
        assert entry in lines, entry
