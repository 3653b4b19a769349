# SPDX-License-Identifier: GPL-3.0-or-later
"""Add-on preferences: the Python interpreter that runs the engine (checked with `python -m engine
doctor`), the job folder, and the defaults of new training runs."""
import os

import bpy

from ..engine import config
from .engine_python import ROOT, default_python, run_doctor
from .props import enum_items

# The extension's package ("bl_ext.<repo>.marble"): the add-on's name in Blender's preferences.
PACKAGE = __package__.rpartition(".")[0]


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


def default_jobs_root():
    return bpy.utils.extension_path_user(PACKAGE, path="jobs", create=True)


def jobs_root():
    """Where new job folders go: the preference when set and usable, else the extension's user folder.
    Never inside the extension's own folder, which an update or uninstall replaces."""
    prefs = get()
    chosen = prefs.job_root.strip() if prefs is not None else ""
    if chosen:
        chosen = os.path.abspath(bpy.path.abspath(chosen))
        if not is_inside(chosen, ROOT):
            return chosen
    return default_jobs_root()


def is_inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_engine(prefs, python=None):
    """Run the doctor for the configured interpreter and keep its verdict in the preferences."""
    python = python or python_path()
    report = run_doctor(python)
    prefs.engine_ok = bool(report.get("ok"))
    prefs.engine_report = str(report.get("message") or ("Engine ready" if report.get("ok") else "Engine not usable"))
    prefs.engine_checked = python
    return report


def _python_changed(self, context):
    check_engine(self)


def engine_verdict():
    """(ok, message) of the last doctor check when it was for the interpreter now configured, else None."""
    prefs = get()
    if prefs is None or not prefs.engine_checked or prefs.engine_checked != python_path():
        return None
    return prefs.engine_ok, prefs.engine_report


class MarblePreferences(bpy.types.AddonPreferences):
    bl_idname = PACKAGE

    python: bpy.props.StringProperty(
        name="Python",
        description="Python interpreter with torch that runs the Marble engine "
                    "(empty: the interpreter recorded when the extension was built)",
        subtype='FILE_PATH',
        default=default_python(),
        update=_python_changed,
    )
    job_root: bpy.props.StringProperty(
        name="Job Folder",
        description="Where new training jobs are written (empty: the extension's user folder; never "
                    "inside the extension itself)",
        subtype='DIR_PATH')
    default_preset: bpy.props.EnumProperty(name="Default Preset", items=enum_items(config.PRESETS), default='cpu')
    default_device: bpy.props.EnumProperty(name="Default Device", items=enum_items(config.DEVICES), default='auto')
    preview_every: bpy.props.IntProperty(
        name="Preview Interval", default=100, min=0, soft_max=5000,
        description="Show a coarse preview mesh every this many iterations while training (0: none)")
    engine_ok: bpy.props.BoolProperty(name="Engine Ready", options={'SKIP_SAVE'})
    engine_report: bpy.props.StringProperty(name="Engine Check", options={'SKIP_SAVE'})
    engine_checked: bpy.props.StringProperty(name="Checked Interpreter", options={'SKIP_SAVE'})

    def draw(self, context):
        layout = self.layout
        row = layout.row(align=True)
        row.prop(self, "python")
        row.operator("marble.check_engine", text="", icon='FILE_REFRESH')
        python = python_path()
        verdict = engine_verdict()
        if not python:
            layout.label(text="No engine interpreter set: choose a Python that has torch installed",
                         icon='ERROR')
        elif not os.path.isfile(python):
            layout.label(text=f"Not found: {python}", icon='ERROR')
        elif verdict is None:
            layout.label(text="Not checked yet: press the refresh button", icon='QUESTION')
        else:
            layout.label(text=verdict[1], icon='CHECKMARK' if verdict[0] else 'ERROR')
        layout.prop(self, "job_root")
        if self.job_root.strip() and is_inside(os.path.abspath(bpy.path.abspath(self.job_root)), ROOT):
            layout.label(text="Inside the extension's folder: jobs go to the default folder instead",
                         icon='ERROR')
        row = layout.row()
        row.prop(self, "default_preset")
        row.prop(self, "default_device")
        layout.prop(self, "preview_every")


class MARBLE_OT_check_engine(bpy.types.Operator):
    """Check the engine's Python: torch, the device it trains on, missing packages"""
    bl_idname = "marble.check_engine"
    bl_label = "Check Engine"

    def execute(self, context):
        prefs = get()
        if prefs is None:
            self.report({'ERROR'}, "Marble is not enabled")
            return {'CANCELLED'}
        report = check_engine(prefs)
        self.report({'INFO'} if report.get("ok") else {'ERROR'}, prefs.engine_report)
        return {'FINISHED'} if report.get("ok") else {'CANCELLED'}


CLASSES = (MarblePreferences, MARBLE_OT_check_engine)
register, unregister = bpy.utils.register_classes_factory(CLASSES)
