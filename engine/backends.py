"""Which implementation of the hash-grid encoding runs: `tcnn` (tiny-cuda-nn's fused CUDA, when its
Python module imports), `triton` (engine/hashgrid_triton.py, on CUDA GPUs), `torch` (the reference,
everywhere). `auto` takes the first of these that this Python and device can run.

Triton kernels also run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1), slowly: that is
how they are tested without a GPU. `auto` never picks that; `--backend triton` with the variable set does.
"""
import importlib
import os

from .config import InputError

ORDER = ("tcnn", "triton", "torch")


def _importable(module):
    try:
        importlib.import_module(module)
    except Exception:  # not installed, or installed but broken (no CUDA driver for tcnn): unusable either way
        return False
    return True


def triton_interpreted():
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def why_unusable(name, device, features=2):
    """None when backend `name` can run the encoding on `device` (cpu | cuda), else the reason."""
    if name == "torch":
        return None
    if name == "tcnn":
        if device != "cuda":
            return "tiny-cuda-nn runs on CUDA GPUs only"
        if not _importable("tinycudann"):
            return "the tinycudann module does not import in this Python (it is built from source, not on PyPI)"
        return None
    if name == "triton":
        if features & (features - 1):
            return f"the Triton kernels take a power of two of features per level, not {features}"
        if device != "cuda" and not triton_interpreted():
            return "Triton kernels run on CUDA GPUs (or on the CPU under TRITON_INTERPRET=1, for testing)"
        if not _importable("triton"):
            return "the triton package does not import in this Python"
        return None
    raise InputError(f"unknown backend {name!r}: choose auto, {', '.join(ORDER)}")


def available_backends(device, features=2):
    """The backends that can run here, in the order `auto` prefers them."""
    usable = [name for name in ORDER if why_unusable(name, device, features) is None]
    if device != "cuda" and "triton" in usable:  # interpreted Triton is for tests, never a default
        usable.remove("triton")
        usable.append("triton")
    return usable


def resolve_backend(requested, device, features=2):
    """The backend to run: `requested` when it can, the best available for `auto`; InputError (with the
    reason) when a named backend cannot run here."""
    if requested in (None, "auto"):
        return available_backends(device, features)[0]
    reason = why_unusable(requested, device, features)
    if reason is not None:
        raise InputError(f"--backend {requested}: {reason}; use --backend auto or torch")
    return requested


def half_table_enabled(setting, backend, device):
    """Whether lookups read a float16 copy of the tables (encoding.half_table): `auto` turns it on for
    Triton on a GPU, where the lookups are bound by memory traffic; tcnn keeps its own half tables."""
    if setting == "on":
        return backend in ("triton", "torch")
    if setting == "off":
        return False
    return backend == "triton" and device == "cuda"
