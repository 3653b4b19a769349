"""The house's rules, checked on the source (docs/design.md, "Layout"): no module outside tests over
500 lines, and no import circle between files (imports at any depth, function-level ones included)."""
import ast
import os
import subprocess

from conftest import REPO

LIMIT = 500


def source_modules():
    """{dotted name: path} of the repository's Python files outside tests/ (git's view: tracked and
    untracked-but-not-ignored files)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=REPO,
                            capture_output=True, text=True)
    paths = listed.stdout.split() if listed.returncode == 0 else [
        os.path.relpath(os.path.join(base, f), REPO) for base, dirs, files in os.walk(REPO)
        for f in files if f.endswith(".py") and ".venv" not in base]
    modules = {}
    for rel in paths:
        if rel.startswith("tests/") or not os.path.isfile(os.path.join(REPO, rel)):
            continue
        name = rel[:-3].replace("/", ".")
        name = name[: -len(".__init__")] if name.endswith(".__init__") else name
        modules["<root>" if name == "__init__" else name] = os.path.join(REPO, rel)
    return modules


def imports(name, path, modules):
    """The repository modules `name` imports (absolute or relative, at any depth in the file)."""
    package = [] if name == "<root>" else name.split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def cycles(graph):
    """Import circles, ignoring a package and its own submodules (a package's __init__ may gather them)."""
    def related(a, b):
        return a.startswith(b + ".") or b.startswith(a + ".") or "<root>" in (a, b)

    found, done = set(), set()

    def visit(node, stack):
        for nxt in sorted(graph[node]):
            if nxt in stack:
                loop = stack[stack.index(nxt):] + [nxt]
                if not all(related(a, b) for a, b in zip(loop, loop[1:])):
                    found.add(" -> ".join(loop))
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node, [node])
    return found


def test_no_module_outside_tests_is_over_500_lines():
    modules = source_modules()
    assert "engine.train.trainer" in modules and "addon.jobs.client" in modules and "bench.registry" in modules
    long = {name: n for name, path in modules.items()
            if (n := len(open(path, encoding="utf-8").read().splitlines())) > LIMIT}
    assert not long, long


def test_no_import_circle_between_files():
    modules = source_modules()
    graph = {name: imports(name, path, modules) for name, path in modules.items()}
    assert "engine.io.protocol" in graph["engine.cli"]  # the graph sees relative imports
    assert not cycles(graph)


def test_the_circle_check_finds_a_circle():
    graph = {"a.x": {"a.y"}, "a.y": {"b"}, "b": {"a.x"}, "a": {"a.x", "a.y"}}
    assert cycles(graph) == {"a.x -> a.y -> b -> a.x"}
    assert not cycles({"a": {"a.x"}, "a.x": {"a"}})  # a package and its own module
