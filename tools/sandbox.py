"""The sandbox of tests, the demo and the benchmarks (standard library only): HOME, the XDG folders,
Blender's user folder and torch's compile cache pointed into a throw-away folder, so nothing writes
into the user's real Blender configuration or caches. Blender reads BLENDER_USER_RESOURCES once,
when bpy starts: set these before anything imports bpy."""
import os
import shutil
import subprocess
import tempfile

from tools import REPO

SANDBOX_DIRS = {"HOME": "home", "XDG_CACHE_HOME": "cache", "XDG_CONFIG_HOME": "config",
                "XDG_DATA_HOME": "data", "BLENDER_USER_RESOURCES": "blender",
                "TORCHINDUCTOR_CACHE_DIR": "inductor", "HYPOTHESIS_STORAGE_DIRECTORY": "hypothesis",
                "NUMBA_CACHE_DIR": "numba"}


def isolated_env(folder, base=None):
    """A copy of the environment (os.environ, or `base`) with every SANDBOX_DIRS variable pointing
    into `folder` (created), and no bytecode written beside the sources."""
    env = dict(os.environ if base is None else base)
    for name, sub in SANDBOX_DIRS.items():
        path = os.path.join(folder, sub)
        os.makedirs(path, exist_ok=True)
        env[name] = path
    # Compiled bytecode would land beside the sources (and inside the installed extension's folder).
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def enter_sandbox(prefix):
    """Sandbox this process (before bpy is imported) unless a caller did (BLENDER_USER_RESOURCES set):
    returns the new folder, to remove at the end, or None."""
    if os.environ.get("BLENDER_USER_RESOURCES"):
        return None
    folder = tempfile.mkdtemp(prefix=prefix)
    os.environ.update(isolated_env(folder))
    return folder


def fill_in(environ=None):
    """tests/conftest.py's sandbox: without BLENDER_USER_RESOURCES nobody sandboxed this run, so every
    variable is redirected (HOME included); otherwise only those the caller left unset. Returns the new
    folder (to remove at exit), or None when nothing was missing."""
    environ = os.environ if environ is None else environ
    everything = "BLENDER_USER_RESOURCES" not in environ
    missing = [name for name in SANDBOX_DIRS if everything or name not in environ]
    if not missing:
        return None
    folder = tempfile.mkdtemp(prefix="marble-tests-")
    for name in missing:
        path = os.path.join(folder, SANDBOX_DIRS[name])
        os.makedirs(path, exist_ok=True)
        environ[name] = path
    return folder


def run_sandboxed(tag, command):
    """Run `command` in the repository root with a fresh sandbox folder ("{sandbox}" in an argument is
    replaced by its path); return the exit code."""
    folder = tempfile.mkdtemp(prefix=f"marble-{tag}-")
    try:
        return subprocess.call([c.replace("{sandbox}", folder) for c in command], cwd=REPO,
                               env=isolated_env(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
