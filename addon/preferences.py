# SPDX-License-Identifier: GPL-3.0-or-later
"""Add-on preferences: the Python interpreter that runs the engine (it needs torch)."""
import json
import os
import sys

import bpy

from . import PACKAGE, ROOT

BUILD_INFO_FILE = "marble_build.json"  # written into the zip by build.py


def _venv_python(folder):
    if sys.platform == "win32":
        return os.path.join(folder, ".venv", "Scripts", "python.exe")
    return os.path.join(folder, ".venv", "bin", "python")


def default_python(root=ROOT):
    """The engine interpreter to use when the preference is empty.

    First the "python" entry of marble_build.json (the .venv of the checkout the zip was built from),
    then the .venv next to the source when the add-on runs from the repository itself, else "".
    """
    info = os.path.join(root, BUILD_INFO_FILE)
    if os.path.isfile(info):
        try:
            with open(info, encoding="utf-8") as f:
                python = json.load(f).get("python") or ""
        except (OSError, ValueError, AttributeError):
            python = ""
        if python and os.path.isfile(python):
            return python
    python = _venv_python(root)
    if os.path.isfile(python):
        return python
    return ""


def get():
    """This add-on's preferences, or None when it is not enabled (e.g. while unregistering)."""
    addon = bpy.context.preferences.addons.get(PACKAGE)
    return addon.preferences if addon is not None else None


def python_path():
    """The configured interpreter (absolute), falling back to the default when the field is empty."""
    prefs = get()
    python = prefs.python.strip() if prefs is not None else ""
    if not python:
        return default_python()
    return os.path.abspath(bpy.path.abspath(python))


class MarblePreferences(bpy.types.AddonPreferences):
    bl_idname = PACKAGE

    python: bpy.props.StringProperty(
        name="Python",
        description="Python interpreter with torch that runs the Marble engine "
                    "(empty: the interpreter recorded when the extension was built)",
        subtype='FILE_PATH',
        default=default_python(),
    )

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "python")
        python = python_path()
        if not python:
            layout.label(text="No engine interpreter set: choose a Python that has torch installed",
                         icon='ERROR')
        elif not os.path.isfile(python):
            layout.label(text=f"Not found: {python}", icon='ERROR')


def register():
    bpy.utils.register_class(MarblePreferences)


def unregister():
    bpy.utils.unregister_class(MarblePreferences)
