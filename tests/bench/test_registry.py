"""The benchmarks' registry (bench.registry): one module and one Markdown description per benchmark,
the standard library only where build.py reaches, one run_engine and one machine_info, and
docs/benchmarks.md written exactly as before the benchmarks had their own folder."""
import ast
import glob
import os
import re
import sys

from conftest import REPO

from bench import registry
from bench.machine import machine_info

# What runs only in the .venv or on a GPU machine (numpy, torch or bpy at module level is fine there).
VENV_ONLY = {"meshes", "dynamic_eval", "speed_probe", "pose_compare", "texture_measure", "texture_scene"}


def top_level_imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_registry_knows_each_benchmark_module_and_its_description():
    assert list(registry.BENCHMARKS) == ["demo", "rigs", "jobs", "quality", "dynamic", "sequence", "speed", "compile",
                                         "contention", "calibrate", "texture", "scale"]
    for name, spec in registry.BENCHMARKS.items():
        assert os.path.isfile(os.path.join(REPO, "bench", f"{name}.py")), name
        assert os.path.isfile(os.path.join(REPO, "bench", f"{name}.md")), name
        assert spec["about"] and "\n" not in spec["about"] and callable(spec["run"])
        assert set(spec["key"]) <= set(spec["columns"]) and spec["title"].startswith(f"{name}: ")
    assert registry.BENCHMARKS["dynamic"]["includes"] == ["sequence"]


def test_bench_modules_are_standard_library_only_where_build_py_reaches():
    stdlib = set(sys.stdlib_module_names)
    for path in sorted(glob.glob(os.path.join(REPO, "bench", "*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if name in VENV_ONLY:
            continue
        imported = top_level_imports(path)
        assert imported <= stdlib | {"bench", "tools"}, (name, imported - stdlib)
        # nothing in bench imports build.py (no circle: build.py -> bench -> tools)
        assert "build" not in imported, name


def test_one_run_engine_and_one_machine_info():
    defined = {}
    for path in glob.glob(os.path.join(REPO, "bench", "*.py")) + glob.glob(os.path.join(REPO, "demo", "*.py")):
        for node in ast.parse(open(path, encoding="utf-8").read()).body:
            if isinstance(node, ast.FunctionDef) and node.name in ("run_engine", "machine_info", "cpu_model"):
                defined.setdefault(node.name, []).append(os.path.relpath(path, REPO))
    assert defined == {"run_engine": ["bench/engine_run.py"], "machine_info": ["bench/machine.py"],
                       "cpu_model": ["bench/machine.py"]}
    info = machine_info()
    assert info["cpu"] and int(info["cores"]) >= 1


def test_docs_benchmarks_md_is_reproduced_section_by_section():
    """Every section of docs/benchmarks.md is what the registry writes for its rows: the move to bench/
    changed no title, description, column or cell."""
    text = open(registry.BENCHMARKS_DOC, encoding="utf-8").read()
    assert text.startswith(registry.BENCHMARKS_HEADER.rstrip("\n"))
    sections = re.split(r"(?m)^(?=## )", text)[1:]
    assert [s.splitlines()[0][3:].split(":")[0] for s in sections] == [
        "demo", "rigs", "quality", "jobs", "dynamic", "sequence", "speed", "compile", "contention", "calibrate",
        "texture", "scale"]
    for section in sections:
        name = section.splitlines()[0][3:].split(":")[0]
        rows = registry.parse_table(section.splitlines())
        assert rows, name
        assert registry.section_text(name, rows).rstrip("\n") == section.rstrip("\n"), name


def test_rewriting_a_row_leaves_the_document_as_it_was(tmp_path):
    before = open(registry.BENCHMARKS_DOC, encoding="utf-8").read()
    doc = tmp_path / "benchmarks.md"
    doc.write_text(before, encoding="utf-8")
    for name in registry.BENCHMARKS:
        section = before.split(f"## {registry.BENCHMARKS[name]['title']}")[1]
        last = registry.parse_table(section.split("\n## ")[0].splitlines())[-1]
        registry.update_benchmarks_doc(name, last, path=str(doc))
    assert doc.read_text(encoding="utf-8") == before


def test_benchmarks_document(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.BENCHMARKS, "toy", {
        "run": None, "title": "toy: a test benchmark", "about": "Made up.",
        "columns": ["machine", "backend", "seconds"], "key": ["machine", "backend"]})
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text("# Benchmarks\n\nIntro.\n\n## other: kept as it is\n\nHand-written | text.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    registry.update_benchmarks_doc("toy", {"machine": "m1", "backend": "torch", "seconds": "3.0"}, path=str(doc))
    registry.update_benchmarks_doc("toy", {"machine": "m2", "backend": "torch", "seconds": "5.0"}, path=str(doc))
    rows = registry.update_benchmarks_doc("toy", {"machine": "m1", "backend": "torch", "seconds": "2.5"},
                                          path=str(doc))
    assert [(r["machine"], r["seconds"]) for r in rows] == [("m2", "5.0"), ("m1", "2.5")]
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nIntro.\n")
    assert "## other: kept as it is\n\nHand-written | text.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n" in text
    assert text.count("## toy") == 1 and "Made up." in text
    assert "| m1 | torch | 2.5 |" in text and "| m1 | torch | 3.0 |" not in text


