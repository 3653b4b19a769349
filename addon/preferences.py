# SPDX-License-Identifier: GPL-3.0-or-later
"""Add-on preferences: the Python interpreter that runs the engine (checked with `python -m engine
doctor`), Install Engine (addon.engine_install on a thread), the job folder, and the defaults of new
training runs."""
import os
import sys
import threading

import bpy

from ..engine import config
from ..engine import pins as engine_pins
from .engine_install import InstallCancelled, InstallError, Installer, env_python
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
        return default_python() or installed_python()
    return os.path.abspath(bpy.path.abspath(python))


ENGINE_ENV_FOLDER = "engine-python"


def engine_env_folder():
    """Where Install Engine puts the engine's environment: the extension's user folder, which an update
    of the extension keeps."""
    return os.path.join(bpy.utils.extension_path_user(PACKAGE, create=True), ENGINE_ENV_FOLDER)


def installed_python():
    """The interpreter of an environment Install Engine made, or ""."""
    python = env_python(engine_env_folder())
    return python if os.path.isfile(python) else ""


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
    if not _setting_installed_python:  # an installation applies its own doctor's verdict
        check_engine(self)


# Install Engine: addon.engine_install.Installer runs on a thread of its own and writes only its record
# (phase, fraction, message, then result or error); poll_install() (a timer, tests) applies the outcome
# to the preferences on the main thread; draw() reads the record for the progress bar.
_install = None  # the installation in flight: {"installer", "thread", "phase", "fraction", "message", ...}
_setting_installed_python = False


def online_access():
    """Whether Blender allows add-ons to go online (Preferences > System > Network; 4.2+)."""
    return bool(getattr(bpy.app, "online_access", True))


def install_pins():
    """What Install Engine installs: the engine's pins (tests install tiny stand-ins)."""
    return engine_pins.ENGINE_PINS


def start_install(prefs):
    """Start Install Engine on a background thread; None when it started, else why not (a message)."""
    global _install
    poll_install()  # an installation that ended but was not applied yet is applied first
    if _install is not None:
        return "The engine is being installed already"
    wheels = prefs.wheel_folder.strip()
    wheels = os.path.abspath(bpy.path.abspath(wheels)) if wheels else ""
    if wheels and not os.path.isdir(wheels):
        return f"Wheel Folder not found: {wheels}"
    if not wheels and not online_access():
        return ("Install Engine downloads the engine's packages (torch and others): allow it in "
                "Preferences > System > Network > Allow Online Access, or choose a Wheel Folder to install from")
    base = prefs.install_python.strip()
    base = os.path.abspath(bpy.path.abspath(base)) if base else sys.executable  # Blender's own Python
    record = {"phase": "check", "fraction": 0.0, "message": "Starting…", "done": False, "result": None,
              "error": None, "cancelled": False}

    def progress(phase, fraction, message):
        record.update(phase=phase, fraction=fraction, message=message)

    record["installer"] = Installer(engine_env_folder(), base, install_pins(), find_links=wheels or None,
                                    no_index=bool(wheels), progress=progress)
    record["thread"] = threading.Thread(target=_run_install, args=(record,), name="marble-install", daemon=True)
    _install = record
    prefs.install_failed = False
    prefs.install_report = ""
    record["thread"].start()
    timers = getattr(bpy.app, "timers", None)
    if timers is not None and not timers.is_registered(_install_timer):
        timers.register(_install_timer, first_interval=CHECK_POLL_S)
    return None


def _run_install(record):
    # On the installer's thread: only the record is written, never Blender data.
    try:
        record["result"] = record["installer"].run()
    except InstallCancelled as exc:
        record["error"], record["cancelled"] = str(exc), True
    except InstallError as exc:
        record["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - an outcome must always arrive
        record["error"] = f"Install Engine failed: {type(exc).__name__}: {exc}"
    record["done"] = True


def cancel_install():
    """Stop the installation in flight (its thread removes what it made); False when none runs."""
    record = _install
    if record is None:
        return False
    record["installer"].cancel()
    return True


def install_running():
    return _install is not None


def poll_install():
    """On the main thread: once the installation ended, apply its outcome: the Python preference set to
    the new interpreter with the doctor's verdict, or the error. True when an outcome was applied."""
    global _install, _setting_installed_python
    record = _install
    if record is None or not record["done"]:
        return False
    _install = None
    prefs = get()
    if prefs is None:
        return False
    result = record["result"]
    if result is None:
        prefs.install_failed = not record["cancelled"]
        prefs.install_report = record["error"] or "Install Engine failed"
        return True
    _setting_installed_python = True
    try:
        prefs.python = result["python"]
    finally:
        _setting_installed_python = False
    _apply(prefs, python_path(), result["report"])
    prefs.install_failed = False
    prefs.install_report = f"Installed in {result['seconds']:.0f} s: {result['python']}"
    return True


def wait_install(timeout=None):
    """Wait for the installer's thread (scripts, tests), then apply its outcome; True when it ended."""
    record = _install
    if record is not None:
        record["thread"].join(timeout)
    poll_install()
    return _install is None


def _install_timer():
    try:
        poll_install()
    except Exception:  # noqa: BLE001 - e.g. the add-on is being disabled
        return None
    _redraw_preferences()  # the progress bar moves
    return CHECK_POLL_S if _install is not None else None


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
        description="Python interpreter with torch that runs the Marble engine; Install Engine sets it "
                    "(empty: the interpreter recorded when the extension was built, else the installed one)",
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
    wheel_folder: bpy.props.StringProperty(
        name="Wheel Folder",
        description="Optional: a folder of wheels to install the engine from without going online "
                    "(empty: download them)",
        subtype='DIR_PATH')
    install_python: bpy.props.StringProperty(
        name="Base Python",
        description="The Python 3.11 that Install Engine makes the engine's environment with "
                    "(empty: Blender's own)",
        subtype='FILE_PATH')
    install_report: bpy.props.StringProperty(name="Install Report", options={'SKIP_SAVE'})
    install_failed: bpy.props.BoolProperty(name="Install Failed", options={'SKIP_SAVE'})
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
        self.draw_install(layout.box())
        layout.prop(self, "job_root")
        if self.job_root.strip() and is_inside(os.path.abspath(bpy.path.abspath(self.job_root)), ROOT):
            layout.label(text="Inside the extension's folder: jobs go to the default folder instead",
                         icon='ERROR')
        row = layout.row()
        row.prop(self, "default_preset")
        row.prop(self, "default_device")
        layout.prop(self, "preview_every")

    def draw_install(self, box):
        record = _install
        if record is not None:
            row = box.row()
            if hasattr(row, "progress"):  # Blender 4.0+
                row.progress(factor=record["fraction"], type='BAR', text=record["message"])
            else:
                row.label(text=f"{record['message']} ({record['fraction']:.0%})", icon='TIME')
            row.operator("marble.cancel_engine_install", text="Cancel", icon='CANCEL')
            return
        row = box.row()
        installed = os.path.isfile(env_python(engine_env_folder()))
        row.operator("marble.install_engine", text="Reinstall Engine" if installed else "Install Engine",
                     icon='IMPORT')
        box.prop(self, "wheel_folder")
        box.prop(self, "install_python")
        if not self.wheel_folder.strip() and not online_access():
            box.label(text="Needs Preferences > System > Network > Allow Online Access (or a Wheel Folder)",
                      icon='INFO')
        if self.install_report:  # what happened, and a failing command's last lines
            lines = self.install_report.splitlines()
            box.label(text=lines[0], icon='ERROR' if self.install_failed else 'INFO')
            for line in lines[1:][-5:]:
                box.label(text=line, icon='BLANK1')


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


class MARBLE_OT_install_engine(bpy.types.Operator):
    """Make the engine's Python environment: download and install torch and the engine's other packages
    (a few GB) into the extension's user folder, then check it"""
    bl_idname = "marble.install_engine"
    bl_label = "Install Engine"

    def execute(self, context):
        prefs = get()
        if prefs is None:
            self.report({'ERROR'}, "Marble is not enabled")
            return {'CANCELLED'}
        problem = start_install(prefs)
        if problem is not None:
            self.report({'ERROR'}, problem)
            return {'CANCELLED'}
        self.report({'INFO'}, f"Installing the engine into {engine_env_folder()}")
        return {'FINISHED'}


class MARBLE_OT_cancel_engine_install(bpy.types.Operator):
    """Stop Install Engine; the previous environment (if any) stays as it was"""
    bl_idname = "marble.cancel_engine_install"
    bl_label = "Cancel Install"

    def execute(self, context):
        if not cancel_install():
            self.report({'WARNING'}, "No installation is running")
            return {'CANCELLED'}
        return {'FINISHED'}


CLASSES = (MarblePreferences, MARBLE_OT_check_engine, MARBLE_OT_install_engine, MARBLE_OT_cancel_engine_install)
_register, _unregister = bpy.utils.register_classes_factory(CLASSES)


def register():
    _register()


def unregister():
    global _check, _install
    _check = None  # a check still running is dropped: its thread only fills a record nobody reads
    if _install is not None:  # an installation is stopped; its thread removes what it made
        _install["installer"].cancel()
        _install = None
    timers = getattr(bpy.app, "timers", None)
    for timer in (_poll_timer, _install_timer):
        if timers is not None and timers.is_registered(timer):
            timers.unregister(timer)
    _unregister()
