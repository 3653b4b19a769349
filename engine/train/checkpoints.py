"""A job's checkpoints: JOB/checkpoints/step_NNNNNNN.pt, written atomically, the last two kept, read
with weights_only=True (they hold tensors, numbers, strings and lists only: a job folder from elsewhere
must not run code)."""
import glob
import os

import torch

from ..config import InputError
from ..io import protocol

KEEP = 2  # one may be half-read by a concurrent extract


def checkpoint_path(job_dir, step):
    return os.path.join(job_dir, protocol.CHECKPOINTS_DIR, f"step_{step:07d}.pt")


def latest_checkpoint(job_dir):
    found = sorted(glob.glob(os.path.join(job_dir, protocol.CHECKPOINTS_DIR, "step_*.pt")))
    return found[-1] if found else None


def save_checkpoint(job_dir, step, state):
    """Write `state` as step `step`'s checkpoint (temporary file renamed) and drop all but the last KEEP."""
    path = checkpoint_path(job_dir, step)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)
    for old in sorted(glob.glob(os.path.join(job_dir, protocol.CHECKPOINTS_DIR, "step_*.pt")))[:-KEEP]:
        os.remove(old)
    return path


def load_checkpoint(path, device, backend):
    """The checkpoint's dict, its tensors on `device`; InputError when the encoding `backend` cannot
    read its tables (torch and triton share one layout; tiny-cuda-nn keeps its own parameters)."""
    state = torch.load(path, map_location=device, weights_only=True)
    written_by = state.get("backend", "torch")
    if (written_by == "tcnn") != (backend == "tcnn"):
        raise InputError(f"{path} was written by the {written_by} encoding backend and cannot be read by the "
                         f"{backend} backend: run with --backend {written_by} "
                         f"(tcnn checkpoints need tiny-cuda-nn; torch and triton ones are interchangeable)")
    return state
