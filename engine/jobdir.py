"""The job folder as the engine owns it: one engine at a time (a lock naming its process), a fresh
job never mixed with an earlier one's files, and the folder's JSON files read back with a message
naming the file when they are damaged."""
import json
import math
import os
import shutil

from .config import InputError
from .io import protocol

LOCK_FILE = ".marble.lock"
# What an earlier job leaves behind; any of these makes the folder "a job" that --resume continues.
JOB_ENTRIES = (protocol.CONFIG_FILE, protocol.EVENTS_FILE, protocol.NORMALIZATION_FILE, protocol.CHECKPOINTS_DIR,
               protocol.MESHES_DIR, protocol.PREVIEWS_DIR, protocol.CURVES_FILE, "eval", protocol.DATASET_DIR,
               protocol.RANKS_DIR)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the lock file alone, created exclusively
    fcntl = None


def check_out_folder(path):
    """InputError unless `path` is (or can become) a writable folder: not a file, not below a file,
    not read-only."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"--out {path}: a file, not a folder")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"--out {path}: {parent} is a file, so no folder can be made below it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {path}: {parent} is not writable")


def holds_a_job(path):
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, name)) for name in JOB_ENTRIES)


def clear_job(path):
    """Remove an earlier job's files from `path` (--overwrite); other files stay."""
    for name in JOB_ENTRIES:
        entry = os.path.join(path, name)
        if os.path.isdir(entry):
            shutil.rmtree(entry)
        elif os.path.exists(entry):
            os.remove(entry)


class JobLock:
    """Holds JOB/.marble.lock for the life of the engine process: a second engine on the same folder
    ends at once with an error naming the process that holds it. The operating system drops the
    lock when the process dies (flock), so a killed engine leaves no stale lock."""

    def __init__(self, job_dir):
        self.path = os.path.join(job_dir, LOCK_FILE)
        self.fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise InputError(f"{os.path.dirname(self.path)}: another Marble engine (process {holder}) is "
                             f"using this job folder; wait for it to end, cancel it, or choose another --out")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def read_json_file(path, what):
    """The JSON object in `path`; InputError naming the file when it is missing, damaged or not an object."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: missing ({what})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: damaged {what}, not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: damaged {what}: expected a JSON object, found {type(data).__name__}")
    return data


def read_config(path):
    """The job's Config from config.json, checked like the command line's."""
    from .config import Config
    data = read_json_file(path, "job configuration")
    try:
        cfg = Config.from_dict(data)
        cfg.validate()
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{path}: damaged job configuration ({type(exc).__name__}: {exc})") from None
    return cfg


def read_normalization(path):
    """(centre, radius) from normalization.json: three finite numbers and a finite positive radius."""
    data = read_json_file(path, "job region")
    center, radius = data.get("center"), data.get("radius")
    try:
        center = [float(c) for c in center]
        radius = float(radius)
    except (TypeError, ValueError):
        raise InputError(f"{path}: damaged job region: 'center' must be 3 numbers and 'radius' a number") from None
    if len(center) != 3 or not all(map(math.isfinite, center)) or not (math.isfinite(radius) and radius > 0):
        raise InputError(f"{path}: damaged job region: centre {center} and radius {radius} (it must be "
                         f"positive and finite)")
    return center, radius
