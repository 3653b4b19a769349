"""Mixed precision: which reduced float type a device trains its small MLPs in, and the autocast
context that applies it."""
import torch

from ..config import InputError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mixed_precision_dtype(mode, device):
    """The autocast dtype for train.mixed_precision `mode` on `device` (None: full precision).
    auto: bfloat16 on CUDA GPUs that have it (Ampere and later), float16 on older ones, off on the CPU
    (CPU autocast is slower than float32 for these small layers)."""
    if mode == "off":
        return None
    if mode == "auto":
        if not str(device).startswith("cuda"):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode not in DTYPES:
        raise InputError(f"train.mixed_precision must be auto, off, bf16 or fp16, got {mode!r}")
    return DTYPES[mode]


def reduced_precision(module, x):
    """An autocast context at the module's `amp_dtype` (None: full precision) for tensors like x."""
    dtype = getattr(module, "amp_dtype", None)
    return torch.autocast(device_type=x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
