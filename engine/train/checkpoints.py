"""A job's checkpoints: JOB/checkpoints/step_NNNNNNN.pt, written atomically, the last two kept, read
with weights_only=True (they hold tensors, numbers, strings and lists only: a job folder from elsewhere
must not run code). A damaged newest checkpoint gives way to the newest intact one."""
import errno
import glob
import os
import tempfile

import torch

from ..config import InputError
from ..io import protocol

KEEP = 2  # one may be half-read by a concurrent extract


class DiskFull(OSError):
    """No space left for a checkpoint; the previous checkpoints are intact."""


def checkpoint_path(job_dir, step):
    return os.path.join(job_dir, protocol.CHECKPOINTS_DIR, f"step_{step:07d}.pt")


def checkpoints(job_dir):
    """The job's checkpoint paths, oldest first."""
    return sorted(glob.glob(os.path.join(job_dir, protocol.CHECKPOINTS_DIR, "step_*.pt")))


def latest_checkpoint(job_dir):
    found = checkpoints(job_dir)
    return found[-1] if found else None


def save_checkpoint(job_dir, step, state):
    """Write `state` as step `step`'s checkpoint (write_state) and drop all but the last KEEP."""
    path = write_state(checkpoint_path(job_dir, step), state)
    for old in checkpoints(job_dir)[:-KEEP]:
        os.remove(old)
    return path


def write_state(path, state):
    """torch.save `state` to `path` through a unique temporary file renamed into place. On a full disk
    the temporary file is removed, whatever was at `path` stays, and DiskFull says so."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.chmod(tmp, protocol.FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(exc.errno, f"no space left on the disk for the checkpoint {path}; the previous "
                                      f"checkpoints are intact: free some space and resume") from None
        raise
    return path


def load_checkpoint(path, device, backend):
    """The checkpoint's dict, its tensors on `device`; InputError when the encoding `backend` cannot
    read its tables (torch and triton share one layout; tiny-cuda-nn keeps its own parameters)."""
    state = torch.load(path, map_location=device, weights_only=True)
    written_by = state.get("backend", "torch") if isinstance(state, dict) else None
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise InputError(f"{path} is not a Marble checkpoint")
    if (written_by == "tcnn") != (backend == "tcnn"):
        raise InputError(f"{path} was written by the {written_by} encoding backend and cannot be read by the "
                         f"{backend} backend: run with --backend {written_by} "
                         f"(tcnn checkpoints need tiny-cuda-nn; torch and triton ones are interchangeable)")
    return state


def load_newest_intact(job_dir, device, backend, warn):
    """(path, state) of the newest checkpoint that loads, or (None, None) when the job has none; a
    damaged newer one (truncated, empty, garbage) is skipped with a warning. Backend mismatches and
    pickled code are refused, not skipped: they are not damage."""
    for path in reversed(checkpoints(job_dir)):
        try:
            return path, load_checkpoint(path, device, backend)
        except InputError:
            raise
        except Exception as exc:  # torch raises several types for a damaged file
            if "GLOBAL" in str(exc):  # weights_only refused a class or function the file names
                raise InputError(f"{path} holds more than tensors and numbers (it would run code when "
                                 f"loaded); Marble refuses it") from None
            detail = (str(exc).splitlines() or [""])[0][:200]
            warn(f"{path} cannot be read ({type(exc).__name__}{': ' + detail if detail else ''}); "
                 f"using the checkpoint before it")
    return None, None
