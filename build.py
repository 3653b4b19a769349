#!/usr/bin/env python3
"""Marble's one entry point (standard library only).

    python3 build.py setup [--force]    create .venv (Python 3.11) with the pinned packages
    python3 build.py test [PYTEST ARGS]  set up if needed, then run the test suite in a sandbox
    python3 build.py demo [DEMO ARGS]    set up if needed, then reconstruct the embedded default scene
    python3 build.py extension [--dist DIR]  build dist/marble-<version>.zip with Blender's build command
    python3 build.py bench [NAMES] [--iterations N]  run benchmarks, print a table, update docs/benchmarks.md
        bench quality [--scenes armadillo,spot,bunny,dtu,fox] [--preset cpu] [--views 64] [--size 200] [--set K=V]
        bench jobs: train through the add-on with live previews, time every tick of the job client
        bench speed [--parts encoding,train,dtu,dynamic] [--prepare] [--from-json FILE]: encoding against its
            memory floor, training rate, DTU to a mesh, a dynamic frame (python -m bench.speed_probe, GPU-ready)

This file only dispatches. The work is done by the build tools in tools/ (the .venv and its pins, the
test sandbox, the extension zip, the shared data) and by the benchmarks in bench/ (bench.registry).
"""
import argparse
import os
import shlex
import sys

REPO = os.path.dirname(os.path.abspath(__file__))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools import BuildError, log  # noqa: E402
from tools.env import ensure_setup  # noqa: E402
from tools.sandbox import run_sandboxed  # noqa: E402


def cmd_setup(argv):
    parser = argparse.ArgumentParser(prog="build.py setup", description="Create .venv with the pinned packages.")
    parser.add_argument("--force", action="store_true", help="run pip even when the stamp matches")
    args = parser.parse_args(argv)
    ensure_setup(force=args.force)
    return 0


def cmd_test(argv):
    python = ensure_setup()
    # `build.py test tests/test_x.py::name` runs just that; otherwise the whole of tests/.
    paths = [a for a in argv if not a.startswith("-") and os.path.exists(os.path.join(REPO, a.split("::")[0]))]
    targets = [] if paths else ["tests"]
    log("test", "pytest " + shlex.join(targets + argv))
    return run_sandboxed("test", [python, "-m", "pytest", *targets, "-q", "--basetemp={sandbox}/pytest",
                                  "-o", "cache_dir={sandbox}/pytest-cache", *argv])


def cmd_demo(argv):
    python = ensure_setup()
    log("demo", "reconstructing the embedded default scene (python -m demo.run)")
    return run_sandboxed("demo", [python, "-m", "demo.run", *argv])


def cmd_extension(argv):
    from tools.extension import build_extension

    parser = argparse.ArgumentParser(prog="build.py extension", description="Build dist/marble-<version>.zip.")
    parser.add_argument("--dist", default=os.path.join(REPO, "dist"), help="output folder (default dist/)")
    args = parser.parse_args(argv)
    path = build_extension(args.dist)
    log("extension", f"built {path}")
    return 0


def cmd_bench(argv):
    from bench import registry

    return registry.main(argv)


COMMANDS = {"setup": cmd_setup, "test": cmd_test, "demo": cmd_demo, "extension": cmd_extension,
            "bench": cmd_bench}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.rstrip())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(__doc__.rstrip())
        print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
