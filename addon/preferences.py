# SPDX-License-Identifier: GPL-3.0-or-later
"""Add-on preferences: the Python interpreter that runs the engine (checked with `python -m engine
doctor`), the job folder, and the defaults of new training runs."""
import os
import threading

import bpy

from ..engine import config
from .engine_python import ROOT, default_python, interpreter_problem, run_doctor
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


# The doctor check: `python -m engine doctor` can take up to engine_python.DOCTOR_TIMEOUT_S (importing
# torch the first time), so it runs on a thread of its own and Blender's main thread never waits for
# it. The thread only fills its record; poll_check() (a timer, engine_verdict(), tests) applies the
# verdict to the preferences on the main thread.
CHECK_POLL_S = 0.25
_check = None  # the check in flight: {"python", "report" (None until the doctor answered), "thread"}


def check_engine(prefs, python=None):
    """Check the configured interpreter. What shows without running it (unset, missing, not executable)
    is the verdict at once; else the doctor starts in the background, the preferences say "checking"
    and this returns at once. Returns the report, or None while the check runs."""
    global _check
    python = python or python_path()
    problem = interpreter_problem(python)
    if problem is not None:
        _check = None
        report = {"ok": False, "message": problem}
        _apply(prefs, python, report)
        return report
    record = {"python": python, "report": None}
    record["thread"] = threading.Thread(target=_run_check, args=(record,), name="marble-doctor", daemon=True)
    _check = record
    prefs.engine_ok = False
    prefs.engine_checked = ""  # no verdict for this interpreter until the doctor answers
    prefs.engine_report = f"Checking {python}…"
    record["thread"].start()
    timers = getattr(bpy.app, "timers", None)
    if timers is not None and not timers.is_registered(_poll_timer):
        timers.register(_poll_timer, first_interval=CHECK_POLL_S)
    return None


def _run_check(record):
    # On the doctor's thread: only the record is written, never Blender data.
    try:
        report = run_doctor(record["python"])
    except Exception as exc:  # noqa: BLE001 - a verdict must always arrive
        report = {"ok": False, "message": f"The check of {record['python']} failed: {exc}"}
    record["report"] = report if isinstance(report, dict) else {"ok": False, "message": "No answer"}


def _apply(prefs, python, report):
    prefs.engine_ok = bool(report.get("ok"))
    prefs.engine_report = str(report.get("message") or ("Engine ready" if report.get("ok") else "Engine not usable"))
    prefs.engine_checked = python


def check_state():
    """'checking' while the doctor runs for the configured interpreter, 'ok' or 'failed' once its
    verdict is in, 'unchecked' otherwise."""
    poll_check()
    record = _check
    if record is not None and record["python"] == python_path():
        return 'checking'
    verdict = engine_verdict()
    return 'unchecked' if verdict is None else ('ok' if verdict[0] else 'failed')


def poll_check():
    """On the main thread: apply the doctor's verdict once it arrived (a check for an interpreter that
    is no longer configured is dropped). True when a verdict was applied."""
    global _check
    record = _check
    if record is None or record["report"] is None:
        return False
    _check = None
    prefs = get()
    if prefs is None or record["python"] != python_path():
        return False
    _apply(prefs, record["python"], record["report"])
    return True


def wait_check(timeout=None):
    """Wait for the doctor's thread (scripts, tests), then apply its verdict; the check's state after."""
    record = _check
    if record is not None:
        record["thread"].join(timeout)
    return check_state()


def _poll_timer():
    try:
        applied = poll_check()
    except Exception:  # noqa: BLE001 - e.g. the add-on is being disabled
        return None
    if applied:
        _redraw_preferences()
    return CHECK_POLL_S if _check is not None else None


def _redraw_preferences():
    wm = getattr(bpy.context, "window_manager", None)
    for window in (wm.windows if wm is not None else ()):
        screen = window.screen
        for area in (screen.areas if screen is not None else ()):
            if area.type == 'PREFERENCES':
                area.tag_redraw()


def _python_changed(self, context):
    check_engine(self)


def engine_verdict():
    """(ok, message) of the last doctor check when it was for the interpreter now configured, else None
    (also while the check runs)."""
    poll_check()
    return _verdict()


def _verdict():
    # engine_verdict() without applying a verdict that arrived (draw() must not write properties).
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
        verdict = _verdict()
        if not python:
            layout.label(text="No engine interpreter set: choose a Python that has torch installed",
                         icon='ERROR')
        elif not os.path.isfile(python):
            layout.label(text=f"Not found: {python}", icon='ERROR')
        elif _check is not None and _check["python"] == python:
            layout.label(text=f"Checking {python}…", icon='TIME')
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
        if report is None:  # the doctor runs in the background; the preferences show its verdict
            self.report({'INFO'}, prefs.engine_report)
            return {'FINISHED'}
        self.report({'INFO'} if report.get("ok") else {'ERROR'}, prefs.engine_report)
        return {'FINISHED'} if report.get("ok") else {'CANCELLED'}


CLASSES = (MarblePreferences, MARBLE_OT_check_engine)
_register, _unregister = bpy.utils.register_classes_factory(CLASSES)


def register():
    _register()


def unregister():
    global _check
    _check = None  # a check still running is dropped: its thread only fills a record nobody reads
    timers = getattr(bpy.app, "timers", None)
    if timers is not None and timers.is_registered(_poll_timer):
        timers.unregister(_poll_timer)
    _unregister()
