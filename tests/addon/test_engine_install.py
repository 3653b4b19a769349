"""Install Engine (addon/engine_install.py, the preferences' button), offline: tiny wheels the tests build
themselves, pinned and installed with `--no-index --find-links`. The environment is made with `python
-m venv` in a temporary sibling, renamed into place and must then run (its python imports the packages,
its scripts name the final folder); a failure or a cancel leaves nothing and the old environment as it
was; the doctor's verdict on the new interpreter ends up in the preferences."""
import base64
import hashlib
import os
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from addon_conftest import bpy_free

TINY_PINS = {"marble-tiny-a": "1.0", "marble-tiny-b": "2.0"}


@pytest.fixture(scope="module")
def install():
    return bpy_free("addon.engine_install")


def build_wheel(folder, name, version, source, requires=(), scripts=None):
    """A pure-Python wheel: the module `name` (dashes as underscores) and its dist-info."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {f"{module}.py": source,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: marble-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    if scripts:
        files[f"{info}/entry_points.txt"] = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(os.path.join(folder, f"{module}-{version}-py3-none-any.whl"), "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)


@pytest.fixture
def wheels(tmp_path, monkeypatch):
    """A folder with marble-tiny-a 1.0 (needs marble-tiny-b 2.0; console script `tiny-a`) and
    marble-tiny-b 2.0; pip sees no configuration but the command line's."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    build_wheel(str(folder), "marble-tiny-a", "1.0", "VALUE = 'a'\ndef main():\n    print('tiny-a here')\n",
                requires=["marble-tiny-b==2.0"], scripts={"tiny-a": "marble_tiny_a:main"})
    build_wheel(str(folder), "marble-tiny-b", "2.0", "VALUE = 'b'\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in list(os.environ):
        if name.startswith("PIP_") and name != "PIP_CONFIG_FILE":
            monkeypatch.delenv(name)
    return str(folder)


def old_environment(target):
    """A previous environment at `target`, recognisable by its marker file."""
    os.makedirs(target)
    with open(os.path.join(target, "old-marker"), "w") as f:
        f.write("old")


def assert_only_the_old_environment(target):
    assert os.listdir(os.path.dirname(target)) == [os.path.basename(target)]
    assert os.listdir(target) == ["old-marker"]


def test_installs_into_place_over_an_older_environment(install, wheels, tmp_path):
    target = str(tmp_path / "user" / "engine-python")
    old_environment(target)
    events = []
    installer = install.Installer(target, sys.executable, TINY_PINS, find_links=wheels, no_index=True,
                                  progress=lambda *event: events.append(event))
    result = installer.run()

    python = install.env_python(target)
    assert result["python"] == python and os.path.isfile(python)
    # The new environment replaced the old one; no temporary folder is left beside it.
    assert os.listdir(os.path.dirname(target)) == ["engine-python"]
    assert not os.path.exists(os.path.join(target, "old-marker"))
    # The renamed environment runs: its python imports the packages from its own site-packages, and
    # pip and the console script (their shebangs rewritten) run too.
    probe = subprocess.run([python, "-c", "import marble_tiny_a as a, marble_tiny_b as b; "
                            "print(a.VALUE + b.VALUE); print(a.__file__)"], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    value, where = probe.stdout.split()
    assert value == "ab" and where.startswith(target + os.sep)
    pip = subprocess.run([os.path.join(install.bin_folder(target), "pip"), "--version"], capture_output=True, text=True)
    assert pip.returncode == 0 and target + os.sep in pip.stdout, pip.stderr
    script = subprocess.run([os.path.join(install.bin_folder(target), "tiny-a")], capture_output=True, text=True)
    assert script.stdout.strip() == "tiny-a here", script.stderr
    for name in os.listdir(install.bin_folder(target)) + ["../pyvenv.cfg"]:
        path = os.path.join(install.bin_folder(target), name)
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                assert b".installing-" not in f.read(), name
    # Progress: every phase in order, the fraction never going back, pip's packages named.
    order = [phase for phase, _, _ in install.PHASES]
    phases = [event[0] for event in events]
    assert [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]] == order
    fractions = [event[1] for event in events]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    messages = " | ".join(event[2] for event in events if event[0] == "download")
    assert "marble_tiny_a" in messages and "marble_tiny_b" in messages
    assert any(event[2] == "Installing 2 packages" for event in events)
    # The doctor ran in the new interpreter: no torch there, and it says so.
    report = result["report"]
    assert report["ok"] is False and "torch" in report["missing"] and "torch" in report["message"]
    assert report["python"] == python


def test_a_failing_pip_leaves_nothing_and_says_why(install, wheels, tmp_path):
    target = str(tmp_path / "user" / "engine-python")
    old_environment(target)
    installer = install.Installer(target, sys.executable, {**TINY_PINS, "marble-missing": "9.9"},
                                  find_links=wheels, no_index=True)
    with pytest.raises(install.InstallError) as failed:
        installer.run()
    assert "pip install failed" in str(failed.value)
    assert any("marble-missing==9.9" in line for line in failed.value.details)  # pip's own last lines
    assert_only_the_old_environment(target)


def test_cancel_while_venv_runs_and_while_pip_runs(install, wheels, tmp_path):
    target = str(tmp_path / "user" / "engine-python")
    old_environment(target)

    # While `python -m venv` runs (from another thread, as the preferences' Cancel does).
    installer = install.Installer(target, sys.executable, TINY_PINS, find_links=wheels, no_index=True)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_run(installer)))
    thread.start()
    deadline = time.monotonic() + 60
    while installer._process is None and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    process = installer._process
    assert process is not None and process.args[1:3] == ["-m", "venv"]
    installer.cancel()
    thread.join(60)
    assert not thread.is_alive() and isinstance(outcome[0], install.InstallCancelled)
    assert_only_the_old_environment(target)

    # While pip runs: cancelled at its first package.
    def progress(phase, fraction, message):
        if message.startswith("Collecting"):
            installer.cancel()

    installer = install.Installer(target, sys.executable, TINY_PINS, find_links=wheels, no_index=True,
                                  progress=progress)
    assert isinstance(_run(installer), install.InstallCancelled)
    assert installer.cancelled
    assert_only_the_old_environment(target)


def _run(installer):
    try:
        return installer.run()
    except Exception as exc:  # noqa: BLE001 - the caller looks at what came out
        return exc


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for a Python")
def test_the_python_must_be_3_11(install, tmp_path):
    fake = tmp_path / "python3.10"
    fake.write_text("#!/bin/sh\necho 3 10 4\n")
    fake.chmod(0o755)
    problem = install.python_problem(str(fake))
    assert "Python 3.10.4" in problem and "Python 3.11" in problem
    target = tmp_path / "user" / "engine-python"
    with pytest.raises(install.InstallError, match="3.10.4"):
        install.Installer(str(target), str(fake), TINY_PINS).run()
    assert not (tmp_path / "user").exists()  # nothing made
    assert "not found" in install.python_problem(str(tmp_path / "nowhere"))
    assert install.python_problem(sys.executable) is None


def test_pip_command_takes_the_torch_build_for_the_machine(install):
    pins = {"torch": "2.13.0", "numpy": "1.26.4", "triton": "3.7.1"}
    python = "/env/bin/python"
    cpu = install.Installer("/x/env", "py", pins, cuda=False).pip_command(python)
    assert cpu[:4] == [python, "-m", "pip", "install"]
    assert cpu[cpu.index("--extra-index-url") + 1] == install.engine_pins.TORCH_CPU_INDEX
    assert "torch==2.13.0" in cpu and "numpy==1.26.4" in cpu
    assert ("triton==3.7.1" in cpu) == sys.platform.startswith("linux")
    gpu = install.Installer("/x/env", "py", pins, cuda=True).pip_command(python)
    assert "--extra-index-url" not in gpu  # the default index's torch is the CUDA build
    offline = install.Installer("/x/env", "py", pins, find_links="/w", no_index=True, cuda=False).pip_command(python)
    assert "--no-index" in offline and offline[offline.index("--find-links") + 1] == "/w"
    assert "--extra-index-url" not in offline
    chosen = install.Installer("/x/env", "py", pins, index_url="file:///i", cuda=False).pip_command(python)
    assert chosen[chosen.index("--index-url") + 1] == "file:///i" and "--extra-index-url" not in chosen


# ---------------------------------------------------------------------------------------------
# The preferences' Install Engine, in the sandboxed Blender

class Layout:
    """Records what a draw function puts in a UILayout (the preferences cannot be drawn headless)."""

    def __init__(self):
        self.calls = []

    def row(self, **kwargs):
        return self

    def progress(self, factor=0.0, type='BAR', text=""):
        assert 0.0 <= factor <= 1.0
        self.calls.append(("progress", text))

    def label(self, text="", icon='NONE'):
        self.calls.append(("label", text))

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties
        self.calls.append(("prop", name))

    def operator(self, idname, text="", icon='NONE'):
        self.calls.append(("operator", idname, text) if text and idname == "marble.install_engine"
                          else ("operator", idname))


@pytest.fixture
def prefs_install(marble, wheels, tmp_path, monkeypatch):
    """The preferences' installation pointed at a temporary folder, tiny pins and offline Blender."""
    target = str(tmp_path / "user" / "engine-python")
    monkeypatch.setattr(marble.preferences, "engine_env_folder", lambda: target)
    monkeypatch.setattr(marble.preferences, "install_pins", lambda: TINY_PINS)
    monkeypatch.setattr(marble.preferences, "online_access", lambda: False)
    yield marble, target, wheels
    marble.preferences.cancel_install()
    marble.preferences.wait_install(60)


def test_install_engine_from_the_preferences(prefs_install):
    import bpy

    marble, target, wheels = prefs_install
    prefs = marble.prefs
    prefs.wheel_folder = ""
    with pytest.raises(RuntimeError, match="Allow Online Access"):  # offline and no wheel folder
        bpy.ops.marble.install_engine()
    assert not marble.preferences.install_running()
    prefs.wheel_folder = wheels
    assert bpy.ops.marble.install_engine() == {'FINISHED'}
    assert marble.preferences.install_running()
    drawn = Layout()
    prefs.draw_install(drawn)  # while it runs: the progress bar (or its text) and Cancel
    assert ("operator", "marble.cancel_engine_install") in drawn.calls
    assert any(call[0] in ("progress", "label") for call in drawn.calls)
    assert marble.preferences.wait_install(120)
    python = marble.engine_install.env_python(target)
    assert prefs.python == python and not prefs.install_failed and python in prefs.install_report
    # The installer's doctor verdict is applied for the new interpreter (no second check runs).
    assert prefs.engine_checked == python and prefs.engine_ok is False
    assert "torch" in prefs.engine_report
    assert marble.preferences.check_state() == 'failed'
    drawn = Layout()
    prefs.draw_install(drawn)
    assert ("operator", "marble.install_engine", "Reinstall Engine") in drawn.calls
    assert any(call[0] == "label" and python in call[1] for call in drawn.calls)


def test_cancel_install_from_the_preferences(prefs_install):
    import bpy

    marble, target, wheels = prefs_install
    prefs = marble.prefs
    before = prefs.python
    prefs.wheel_folder = wheels
    assert bpy.ops.marble.install_engine() == {'FINISHED'}
    assert bpy.ops.marble.cancel_engine_install() == {'FINISHED'}
    assert marble.preferences.wait_install(60)
    assert "cancelled" in prefs.install_report and not prefs.install_failed
    assert prefs.python == before
    parent = os.path.dirname(target)
    assert not os.path.exists(parent) or os.listdir(parent) == []


# ---------------------------------------------------------------------------------------------
# The real pins, offline, where this machine holds all their wheels

LOCAL_WHEELS = "/opt/wheels"
LOCAL_INDEX = "/opt/pypi/simple"


def missing_local_wheels(pins):
    """The pins (name==version) neither the local wheel folder nor the local file index offers."""
    def offered(name, version):
        stems = {f"{spelling}-{version}" for spelling in (name, name.replace("-", "_"), name.lower(),
                                                           name.lower().replace("-", "_"))}
        local = os.listdir(LOCAL_WHEELS) if os.path.isdir(LOCAL_WHEELS) else []
        if any(f.startswith(tuple(stems)) for f in local):
            return True
        page = os.path.join(LOCAL_INDEX, name.lower().replace("_", "-"), "index.html")
        if os.path.isfile(page):
            with open(page, encoding="utf-8", errors="replace") as f:
                return any(stem in f.read() for stem in stems)
        return False

    return [f"{name}=={version}" for name, version in pins.items() if not offered(name, version)]


@pytest.mark.slow
def test_the_engine_pins_install_offline_and_the_doctor_passes(install, tmp_path):
    from engine import pins

    wanted = pins.for_platform(pins.ENGINE_PINS)
    missing = missing_local_wheels(wanted)
    if missing:
        pytest.skip("this machine holds no local wheels for " + ", ".join(missing))
    target = str(tmp_path / "user" / "engine-python")
    installer = install.Installer(target, sys.executable, wanted, find_links=LOCAL_WHEELS, cuda=False,
                                  index_url="file://" + LOCAL_INDEX)
    result = installer.run()
    assert result["report"]["ok"], result["report"]
    assert result["report"]["missing"] == [] and result["report"]["optional_missing"] == []
