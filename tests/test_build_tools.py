"""build.py itself: standard library only, one entry point, pins in one place, the sandbox, the
benchmark document; .ci/run and the README's first commands."""
import ast
import os
import re
import stat
import subprocess
import sys

import pytest

import build

REPO = build.REPO


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
    # build.py runs with a bare python3: the standard library, and demo.speed_bench (for the speed
    # benchmark's columns), whose module level is itself standard library only.
    imported = imported_modules(os.path.join(REPO, "build.py"))
    own = {name for name in imported if name.startswith("demo.")}
    assert own == {"demo.speed_bench"}
    stdlib = set(sys.stdlib_module_names)
    assert imported and {name.split(".")[0] for name in imported - own} <= stdlib
    bench = imported_modules(os.path.join(REPO, "demo", "speed_bench.py"), top_level_only=True)
    assert {name.split(".")[0] for name in bench} <= stdlib, bench


def test_pins_in_one_place():
    # What the issue names is pinned, with the versions the platform needs.
    assert {"torch", "bpy", "numpy", "trimesh", "PyMCubes", "pytest"} <= set(build.PINS)
    assert build.PINS["torch"] == "2.13.0" and build.PINS["bpy"] == "5.0.1"
    assert int(build.PINS["numpy"].split(".")[0]) < 2  # bpy 5.0 needs numpy < 2
    assert build.requirements() == [f"{k}=={v}" for k, v in build.PINS.items()]
    # No other version numbers of these packages anywhere in build.py.
    text = open(os.path.join(REPO, "build.py"), encoding="utf-8").read()
    for version in build.PINS.values():
        assert text.count(f'"{version}"') == 1, version
    # The stamp changes with the pins, the Python and the torch variant.
    base = build._stamp("3.11.7", "cpu")
    assert base == build._stamp("3.11.7", "cpu")
    assert len({base, build._stamp("3.11.8", "cpu"), build._stamp("3.11.7", "cuda")}) == 3


def test_venv_python_is_the_venv_not_its_base():
    python = build.venv_python()
    assert python.startswith(os.path.join(REPO, ".venv") + os.sep)
    assert os.path.isfile(python)


def test_setup_is_recorded():
    # build.py test ran setup first; running pytest directly may precede it.
    stamp = os.path.join(build.VENV, build.STAMP_FILE)
    if not os.path.exists(stamp):
        pytest.skip("setup has not recorded its stamp yet (pytest run outside build.py)")
    import json
    with open(stamp, encoding="utf-8") as f:
        recorded = json.load(f)
    assert recorded["pins"] == build.PINS
    assert build.check_packages() == []


def test_isolated_env(tmp_path):
    env = build.isolated_env(str(tmp_path), base={"PATH": "/bin", "HOME": "/root"})
    assert env["PATH"] == "/bin"
    for name in ("HOME", "XDG_CACHE_HOME", "BLENDER_USER_RESOURCES", "TORCHINDUCTOR_CACHE_DIR"):
        assert env[name].startswith(str(tmp_path) + os.sep) and os.path.isdir(env[name])
    # This very test run is sandboxed the same way (build.py test or tests/conftest.py).
    assert not os.environ["BLENDER_USER_RESOURCES"].startswith(os.path.expanduser("~/.config"))


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


def test_benchmarks_document(tmp_path, monkeypatch):
    monkeypatch.setitem(build.BENCHMARKS, "toy", {
        "run": None, "title": "toy: a test benchmark", "about": "Made up.",
        "columns": ["machine", "backend", "seconds"], "key": ["machine", "backend"]})
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text("# Benchmarks\n\nIntro.\n\n## other: kept as it is\n\nHand-written | text.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    build.update_benchmarks_doc("toy", {"machine": "m1", "backend": "torch", "seconds": "3.0"}, path=str(doc))
    build.update_benchmarks_doc("toy", {"machine": "m2", "backend": "torch", "seconds": "5.0"}, path=str(doc))
    rows = build.update_benchmarks_doc("toy", {"machine": "m1", "backend": "torch", "seconds": "2.5"},
                                       path=str(doc))
    assert [(r["machine"], r["seconds"]) for r in rows] == [("m2", "5.0"), ("m1", "2.5")]
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nIntro.\n")
    assert "## other: kept as it is\n\nHand-written | text.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n" in text
    assert text.count("## toy") == 1 and "Made up." in text
    assert "| m1 | torch | 2.5 |" in text and "| m1 | torch | 3.0 |" not in text


def test_machine_info():
    info = build.machine_info()
    assert info["cpu"] and int(info["cores"]) >= 1


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
    assert text.index("python3 build.py demo") < text.index("## ")


def test_gitignore_covers_outputs():
    lines = open(os.path.join(REPO, ".gitignore"), encoding="utf-8").read().split()
    for entry in (".venv/", "dist/", "demo/out/", "__pycache__/"):
        assert entry in lines, entry
