"""Marble's build tools (standard library only; nothing here imports torch, numpy or bpy).

    tools.env          the .venv and its pinned packages (setup, the package check)
    tools.sandbox      the throw-away HOME/XDG/Blender folders of tests, the demo and the benchmarks
    tools.extension    building the extension zip and installing it into a sandboxed Blender
    tools.shared_data  where the shared reference data (../shared/data) is

build.py dispatches to these; tests, the demo and the benchmarks import them directly.
"""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BuildError(RuntimeError):
    """A failure with a message a user can act on (printed without a traceback)."""


def log(tag, message):
    print(f"[{tag}] {message}", flush=True)
