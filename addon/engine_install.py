# SPDX-License-Identifier: GPL-3.0-or-later
"""Install Engine: a Python environment with the engine's pinned packages, made from a Python 3.11
(Blender's own, or one the user chooses). No bpy: the preferences run it on a thread; tests run it
directly.

The environment is built in a temporary sibling of the target (`<target>.installing-<random suffix>`) with
`python -m venv` and `python -m pip install`, then renamed into place (an older environment is renamed
away first and removed after). A failure or a cancel removes the temporary folder and leaves the
previous environment as it was. The venv's interpreter is a link to (or a copy of) its base Python and
pyvenv.cfg names only the base, so the renamed environment runs; the scripts in its bin folder (pip's
and the packages' console scripts, activate) name the temporary path and are rewritten to the final one.
"""
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from ..engine import pins as engine_pins
from .engine_python import engine_root, run_doctor

TAIL_LINES = 20              # pip's last lines kept for the error message
LEFTOVER_AGE_S = 3600.0      # a temporary folder this old is a crashed Blender's: removed at the next install
VERSION_TIMEOUT_S = 60.0
# (phase, label, overall fraction at its start): progress() reports these in this order.
PHASES = (
    ("check", "Checking Python", 0.0),
    ("environment", "Creating the environment", 0.02),
    ("download", "Downloading packages", 0.1),
    ("install", "Installing packages", 0.75),
    ("finish", "Moving into place", 0.92),
    ("doctor", "Checking the engine", 0.95),
    ("done", "Installed", 1.0),
)
PHASE_START = {name: start for name, _, start in PHASES}
PHASE_LABEL = {name: label for name, label, _ in PHASES}
PHASE_END = {name: PHASES[i + 1][2] for i, (name, _, _) in enumerate(PHASES[:-1])}


class InstallError(Exception):
    """Why the installation failed; `details`: the failing command's last lines of output."""

    def __init__(self, message, details=()):
        super().__init__(message)
        self.details = list(details)

    def __str__(self):
        message = self.args[0]
        return message + ("\n" + "\n".join(self.details) if self.details else "")


class InstallCancelled(InstallError):
    def __init__(self):
        super().__init__("Installation cancelled: nothing was changed")


def bin_folder(env):
    return os.path.join(env, "Scripts" if sys.platform == "win32" else "bin")


def env_python(env):
    """The interpreter of the environment at `env` (its own, not the base it links to)."""
    return os.path.join(bin_folder(env), "python.exe" if sys.platform == "win32" else "python")


def has_nvidia_gpu():
    """Whether `nvidia-smi -L` lists a GPU: then pip takes torch's CUDA build from the default index."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30,
                                stdin=subprocess.DEVNULL, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and "GPU" in result.stdout


def python_version(python):
    """(major, minor, micro) of the interpreter at `python`, or None when it does not run."""
    try:
        done = subprocess.run([python, "-c", "import sys; print('%d %d %d' % sys.version_info[:3])"],
                              capture_output=True, text=True, timeout=VERSION_TIMEOUT_S, env=_clean_environment(),
                              stdin=subprocess.DEVNULL, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        return tuple(int(part) for part in done.stdout.split()) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def python_problem(python, wanted=engine_pins.PYTHON_VERSION):
    """Why `python` cannot make the engine's environment (not found, does not run, not 3.11), or None."""
    if not python or not os.path.isfile(python):
        return f"Python not found: {python or '(none chosen)'}"
    version = python_version(python)
    want = "%d.%d" % wanted
    if version is None:
        return f"{python} does not run as a Python interpreter"
    if version[:2] != tuple(wanted):
        return (f"{python} is Python {'.'.join(map(str, version))}, but the engine's packages are pinned for "
                f"Python {want} (the one Blender 4.2 to 5.0 bundle): choose a Python {want}")
    return None


def _clean_environment():
    env = dict(os.environ)
    # Blender's Python home and path, or a user's pip settings that install elsewhere, must not leak in.
    for name in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV",
                 "PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_REQUIRE_VIRTUALENV"):
        env.pop(name, None)
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", PIP_NO_INPUT="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def remove_tree(path):
    """Remove a folder, retrying a moment (Windows keeps files of a just-killed process locked)."""
    for attempt in range(10):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return True
        time.sleep(0.2 * (attempt + 1))
    return False


def remove_leftovers(target, min_age_s=LEFTOVER_AGE_S):
    """Remove `<target>.installing-*` and `<target>.old-*` folders a crashed install left behind (only
    those untouched for `min_age_s`: another Blender may be installing right now)."""
    parent, name = os.path.split(os.path.abspath(target))
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        if entry.startswith(name + ".installing-") or entry.startswith(name + ".old-"):
            path = os.path.join(parent, entry)
            try:
                if time.time() - os.path.getmtime(path) >= min_age_s:
                    remove_tree(path)
            except OSError:
                pass


def relocate_scripts(env, old, new):
    """Rewrite the temporary path `old` to `new` in the text files of the environment's bin folder
    (console scripts' shebangs, activate scripts) and pyvenv.cfg. Binary launchers (Windows' .exe
    scripts) are left alone: the engine runs only the interpreter itself."""
    old_bytes, new_bytes = os.fsencode(old), os.fsencode(new)
    folder = bin_folder(env)
    paths = [os.path.join(env, "pyvenv.cfg")] + [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
    for path in paths:
        if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > 1 << 20:
            continue
        with open(path, "rb") as f:
            data = f.read()
        if old_bytes not in data or b"\0" in data:
            continue
        mode = os.stat(path).st_mode
        with open(path, "wb") as f:
            f.write(data.replace(old_bytes, new_bytes))
        os.chmod(path, mode)


class Installer:
    """One installation of `pins` ({name: version}) into the environment folder `target`, made with the
    interpreter `python` (a Python 3.11).

    find_links: a folder of wheels pip also looks in; no_index: only there (offline); index_url: pip's
    index instead of PyPI; cuda: whether to take torch's CUDA build (None: when nvidia-smi finds a GPU;
    else torch comes from TORCH_CPU_INDEX, unless no_index or an index_url is given).
    progress(phase, fraction, message) is called from the thread that runs run(), phases in PHASES'
    order, fraction (0..1, the whole installation) never decreasing. cancel() may be called from any
    thread at any moment.
    """

    def __init__(self, target, python, pins, find_links=None, index_url=None, no_index=False, cuda=None,
                 progress=None, root=None):
        self.target = os.path.abspath(target)
        self.python = python
        self.pins = dict(pins)
        self.find_links = find_links
        self.index_url = index_url
        self.no_index = no_index
        self.cuda = cuda
        self.root = root
        self._progress = progress
        self._fraction = 0.0
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._process = None
        self._collected = set()  # the packages pip named so far ('Collecting x', 'Processing x.whl')

    # -- control --------------------------------------------------------------------------------

    @property
    def cancelled(self):
        return self._cancel.is_set()

    def cancel(self):
        """Stop at once: the running venv or pip (with its children) is killed; run() then removes the
        temporary folder and raises InstallCancelled."""
        with self._lock:
            self._cancel.set()
            process = self._process
        if process is not None and process.poll() is None:
            _kill_tree(process)

    def _check_cancel(self):
        if self._cancel.is_set():
            raise InstallCancelled()

    def _report(self, phase, within=0.0, message=None):
        start, end = PHASE_START[phase], PHASE_END.get(phase, 1.0)
        self._fraction = max(self._fraction, start + (end - start) * min(max(within, 0.0), 1.0))
        if self._progress is not None:
            self._progress(phase, self._fraction, message or PHASE_LABEL[phase])

    # -- the steps ------------------------------------------------------------------------------

    def pip_command(self, python):
        """pip's command line for the environment whose interpreter is `python`."""
        command = [python, "-m", "pip", "install", "--progress-bar", "off", "--only-binary", ":all:"]
        if self.no_index:
            command.append("--no-index")
        if self.index_url:
            command += ["--index-url", self.index_url]
        if self.find_links:
            command += ["--find-links", self.find_links]
        cuda = has_nvidia_gpu() if self.cuda is None else self.cuda
        if "torch" in self.pins and not cuda and not self.no_index and not self.index_url:
            # torch's CPU build (2.13.0+cpu) sorts above PyPI's 2.13.0 (the CUDA build on Linux).
            command += ["--extra-index-url", engine_pins.TORCH_CPU_INDEX]
        return command + engine_pins.requirements(self.pins)

    def run(self):
        """Install; returns {"python": the installed interpreter, "report": the doctor's verdict,
        "seconds"}. Raises InstallError (InstallCancelled on cancel) having left nothing behind."""
        started = time.monotonic()
        self._report("check", message=f"Checking {self.python}")
        problem = python_problem(self.python)
        if problem is not None:
            raise InstallError(problem)
        parent = os.path.dirname(self.target)
        try:
            os.makedirs(parent, exist_ok=True)
            remove_leftovers(self.target)
            staging = tempfile.mkdtemp(prefix=os.path.basename(self.target) + ".installing-", dir=parent)
        except OSError as exc:
            raise InstallError(f"Cannot write the engine's environment in {parent}: {exc.strerror or exc}") from None
        try:
            os.chmod(staging, 0o755)
            self._check_cancel()
            self._report("environment", message=f"Creating the environment with {self.python}")
            prompt = os.path.basename(self.target)  # activate's prompt, else the temporary folder's name
            self._run([self.python, "-m", "venv", "--prompt", prompt, staging], "Creating the environment", parent)
            self._report("download")
            self._run(self.pip_command(env_python(staging)), "pip install", parent, self._pip_line)
            self._report("finish")
            relocate_scripts(staging, staging, self.target)
            self._check_cancel()
            self._swap_in(staging)
        except BaseException:
            remove_tree(staging)
            raise
        python = env_python(self.target)
        self._report("doctor", message=f"Checking the engine with {python}")
        report = run_doctor(python, root=self.root or engine_root())
        self._report("done", 1.0, "Engine installed" if report.get("ok") else "Installed; the check found problems")
        return {"python": python, "report": report, "seconds": time.monotonic() - started}

    def _swap_in(self, staging):
        """Rename `staging` to the target; an older environment is renamed away first, put back if the
        rename fails, and removed after."""
        old = None
        if os.path.lexists(self.target):
            old = tempfile.mkdtemp(prefix=os.path.basename(self.target) + ".old-", dir=os.path.dirname(self.target))
            os.rmdir(old)  # only the unique name: the old environment takes its place
            try:
                os.rename(self.target, old)
            except OSError as exc:
                raise InstallError(f"Cannot replace {self.target} (is the engine running from it?): "
                                   f"{exc.strerror or exc}") from None
        try:
            os.rename(staging, self.target)
        except OSError as exc:
            if old is not None:
                os.rename(old, self.target)
            raise InstallError(f"Cannot move the new environment to {self.target}: {exc.strerror or exc}") from None
        if old is not None:
            remove_tree(old)

    def _run(self, command, what, cwd, on_line=None):
        """Run `command`, its output read line by line (on_line(line) for each); raise InstallError with
        its last lines when it fails, InstallCancelled when cancelled."""
        tail = collections.deque(maxlen=TAIL_LINES)
        with self._lock:
            self._check_cancel()
            try:
                process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, cwd=cwd, env=_clean_environment(),
                                           text=True, encoding="utf-8", errors="replace", bufsize=1,
                                           **_new_process_group())
            except OSError as exc:
                raise InstallError(f"{what}: cannot run {command[0]}: {exc.strerror or exc}") from None
            self._process = process
        try:
            for line in process.stdout:
                line = line.rstrip()
                if line:
                    tail.append(line)
                    if on_line is not None and not self._cancel.is_set():
                        on_line(line)
            code = process.wait()
        finally:
            with self._lock:
                self._process = None
            if process.poll() is None:
                _kill_tree(process)
            process.stdout.close()
        self._check_cancel()
        if code != 0:
            raise InstallError(f"{what} failed (exit code {code}):", tail)

    # -- pip's output -> progress ---------------------------------------------------------------

    def _pip_line(self, line):
        """'Collecting x' / 'Processing x.whl' (one package each), 'Downloading x (size)', 'Installing
        collected packages: ...', 'Successfully installed ...'."""
        text = line.strip()
        found = re.match(r"(Collecting|Processing) (\S+)", text)
        if found:
            self._collected.add(found.group(2))
            # The pins' dependencies are not known beforehand: about as many again is the guess.
            count = len(self._collected)
            expected = max(2 * len(self.pins), count + 1)
            name = os.path.basename(found.group(2))
            name = name.split("-")[0] if name.endswith(".whl") else re.split(r"[=<>!~\[; ]", name)[0]
            self._report("download", count / expected, f"Collecting {name} ({count})")
        elif text.startswith("Downloading "):
            self._report("download", 0.0, text)
        elif text.startswith("Installing collected packages:"):
            names = [name.strip() for name in text.split(":", 1)[1].split(",") if name.strip()]
            self._report("install", 0.0, f"Installing {len(names)} packages")
        elif text.startswith("Successfully installed"):
            self._report("install", 1.0, "Installed the packages")


def _new_process_group():
    # The process and its children (venv's ensurepip, pip's helpers) can be killed together.
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


def _kill_tree(process):
    try:
        if sys.platform == "win32":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            os.killpg(process.pid, signal.SIGKILL)
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        process.kill()
    except OSError:
        pass
