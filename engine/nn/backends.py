"""Which implementation of the hash-grid encoding runs: `tcnn` (tiny-cuda-nn's fused CUDA, when its
Python module imports), `triton` (engine/nn/hashgrid_triton.py, on CUDA GPUs), `numba`
(engine/nn/hashgrid_numba.py, compiled for the CPU when Numba imports: no compiler needed), `torch` (the
reference, everywhere). `auto` takes the first of these that this Python and device can run.

Triton kernels also run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1), slowly: that is
how they are tested without a GPU. `auto` never picks that; `--backend triton` with the variable set does.
"""
import functools
import importlib
import os

from ..config import InputError

ORDER = ("tcnn", "triton", "numba", "torch")


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
    if name == "numba":
        if device != "cpu":
            return "the numba kernels run on the CPU (a GPU runs triton or tcnn)"
        if not _importable("numba"):
            return "the numba package does not import in this Python"
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


def reopened_backend(saved, device, features, warn):
    """The backend to go on with a job (resume, extract, evaluate) that ran with `saved`: the same when
    it runs here, else `auto` with a warning: torch, triton and numba keep the same tables, so a job
    trained on a CPU with numba reopens on a GPU with triton and back. tcnn's parameters are its own
    (engine.train.checkpoints says so on loading), so a tcnn job keeps asking for tcnn."""
    if saved in (None, "auto", "tcnn") or why_unusable(saved, device, features) is None:
        return saved
    warn(f"the job ran with the {saved} encoding backend, which cannot run here "
         f"({why_unusable(saved, device, features)}); going on with --backend auto")
    return "auto"


def kernel_problem(backend, device, features=2, sdf_hidden=None, half_table=False):
    """None when `backend`'s kernels compile and agree with the torch reference on `device`, else why
    not, in words. Only Triton on CUDA is checked (engine.nn.kernel_check.self_check: a few seconds the
    first time, then Triton's cache): interpreted Triton is a test tool, torch is the reference, and
    tiny-cuda-nn is compiled when it is installed."""
    if backend != "triton" or device != "cuda":
        return None
    return _triton_problem(features, sdf_hidden, bool(half_table))


@functools.lru_cache(maxsize=None)
def _triton_problem(features, sdf_hidden, half_table):
    """kernel_problem for Triton on CUDA, once per process and variant (the CLI checks before the job
    starts, the trainer again when it builds the model)."""
    device = "cuda"
    try:
        from .kernel_check import self_check
        self_check(device, features, sdf_hidden, half_table)
    except Exception as exc:  # a compiler error, a driver error, a wrong result: the kernels are unusable here
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        return f"{type(exc).__name__}: {first_line}"
    return None


def checked_backend(requested, device, encoding, sdf_hidden, warn):
    """(backend, half_table) to train with: resolve_backend's choice once its kernels have run here (see
    kernel_problem); when they fail, `warn` says so and the torch backend takes over before training
    starts, rather than the job failing at its first encoding."""
    backend = resolve_backend(requested, device, encoding.features)
    half_table = half_table_enabled(encoding.half_table, backend, device)
    problem = kernel_problem(backend, device, encoding.features, sdf_hidden, half_table)
    if problem is not None:
        warn(f"the {backend} kernels failed their start-up check on this GPU ({problem}); "
             f"training with the torch backend instead")
        backend = "torch"
        half_table = half_table_enabled(encoding.half_table, backend, device)
    return backend, half_table


def half_table_enabled(setting, backend, device):
    """Whether lookups read a float16 copy of the tables (encoding.half_table): `auto` turns it on for
    Triton on a GPU, where the lookups are bound by memory traffic; tcnn keeps its own half tables."""
    if setting == "on":
        return backend in ("triton", "torch")
    if setting == "off":
        return False
    return backend == "triton" and device == "cuda"
