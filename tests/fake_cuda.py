"""A stand-in CUDA device for machines without a GPU: tensors that say they live on cuda:0 and compute
on the CPU, with CUDA's rules about which tensors may meet enforced.

Why not torch's FakeTensorMode: its tensors hold no values, so nothing data-dependent runs (a boolean
mask, `.item()`, an occupancy grid, early termination: every step of the engine has them); and on a
CPU-only torch build the autograd engine aborts the process at the first fake CUDA tensor that needs a
gradient ("PyTorch is not linked with support for cuda devices"). Here every tensor made for "cuda"
is a wrapper around a real CPU tensor that reports device cuda:0 (C++ and autograd see a CPU tensor),
and a dispatch mode checks each operation the way CUDA would:

- tensors on different devices may not meet (CUDA's exceptions: 0-dim CPU tensors, copies between
  devices, CPU index tensors), raising DeviceMismatch;
- a random draw takes a generator of its output's device (a CPU torch.Generator with a CUDA tensor
  fails on a GPU);
- a CUDA tensor does not turn into a numpy array without .cpu().

Inside `fake_cuda()`, torch.cuda says a GPU with bfloat16 is present, `torch.Generator(device="cuda")`
makes a generator that reports cuda, autocast for "cuda" runs CPU autocast with the same dtype (CPU's
lists of ops to cast differ in detail), and torch.load's map_location "cuda" lands tensors on the
stand-in. What this cannot check: kernels and numerics of real CUDA (TF32, atomics, cuBLAS), streams,
memory, speed, and CUDA-only operators.
"""
import contextlib
import time
import types
import weakref

import torch
from torch.utils import _pytree as pytree
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes, return_and_correct_aliasing

CUDA = torch.device("cuda", 0)
aten = torch.ops.aten

# Operations that move data between devices.
_CROSS_DEVICE = {aten.copy_.default, aten._to_copy.default, aten._foreach_copy_.default,
                 aten._foreach_copy.default, aten.lift_fresh.default, aten.lift_fresh_copy.default,
                 aten._local_scalar_dense.default, aten.set_.source_Tensor}
# Advanced indexing accepts index tensors on the CPU (they are copied over).
_INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default,
             aten._unsafe_index.Tensor, aten._unsafe_index_put.default}


# Tensors the autograd engine made during a backward pass (see FakeCudaMode).
_AUTOGRAD_MADE = weakref.WeakValueDictionary()  # id -> tensor (tensors compare by value, not identity)


class DeviceMismatch(RuntimeError):
    """What CUDA raises when tensors on different devices meet in one operation."""


class CudaTensor(torch.Tensor):
    """A CPU tensor (`elem`) that reports device cuda:0."""

    @staticmethod
    def __new__(cls, elem):
        elem = elem.detach()
        tensor = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device="cpu", requires_grad=False)
        tensor.elem = elem
        return tensor

    @property
    def device(self):
        return CUDA

    @property
    def is_cuda(self):
        return True

    @property
    def is_cpu(self):
        return False

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                        "to host memory first.")

    def __array__(self, *args, **kwargs):
        return self.numpy()

    def __repr__(self, **kwargs):
        return f"{self.elem!r} (stand-in cuda:0)"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"a stand-in CUDA tensor reached {func} outside fake_cuda()")


def _device_of(t):
    return CUDA if isinstance(t, CudaTensor) else t.device


def _unwrap(t):
    return t.elem if isinstance(t, CudaTensor) else t


class _FakeCudaGenerator(torch.Generator):
    """A CPU generator that reports device cuda (what torch.Generator(device="cuda") makes on a GPU)."""

    @property
    def device(self):
        return CUDA


class FakeCudaMode(TorchDispatchMode):
    """Runs every operation on the CPU tensors inside, after CUDA's device checks (module docstring)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        wants = kwargs.get("device")
        to_cuda = None
        if wants is not None:
            to_cuda = torch.device(wants).type == "cuda"
            if to_cuda:
                kwargs["device"] = torch.device("cpu")
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        # The autograd engine makes its own tensors (zeros to scatter a gradient into, ...) from the
        # inputs' C++ options, which say cpu here: they take the device of what they meet.
        tensors = [t for t in tensors if _AUTOGRAD_MADE.get(id(t)) is not t]
        in_backward = torch._C._current_autograd_node() is not None
        if func not in _CROSS_DEVICE:
            checked = tensors
            if func in _INDEXING:  # the index tensors (args[1]) may be on the CPU
                indices = {id(t) for t in pytree.tree_leaves(args[1]) if isinstance(t, torch.Tensor)}
                checked = [t for t in tensors if id(t) not in indices or isinstance(t, CudaTensor)]
            _check_devices(func, checked)
        on_cuda = to_cuda if to_cuda is not None else any(isinstance(t, CudaTensor) for t in tensors)
        if func in (aten.copy_.default,) and args:  # copy_ keeps its destination's device
            on_cuda = isinstance(args[0], CudaTensor)
        if func is aten._to_copy.default and wants is None:
            on_cuda = isinstance(args[0], CudaTensor)
        out = func(*pytree.tree_map(_unwrap, args), **pytree.tree_map(_unwrap, kwargs))
        if func is aten._local_scalar_dense.default:
            return out
        if in_backward and not on_cuda:
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and not isinstance(t, CudaTensor):
                    _AUTOGRAD_MADE[id(t)] = t
        wrapped = pytree.tree_map(
            lambda t: CudaTensor(t) if on_cuda and isinstance(t, torch.Tensor) and not isinstance(t, CudaTensor)
            else t, out)
        return return_and_correct_aliasing(func, args, kwargs, wrapped)


class _MoveToCuda(TorchFunctionMode):
    """Moves to "cuda" (Tensor.to/.cuda, torch.tensor/as_tensor with device="cuda"): their Python bindings
    take a CUDA device guard, which a CPU-only torch does not have, before the operation is dispatched.
    They are dispatched here as the aten copy they perform (differentiable, like .to())."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if generator is not None:  # checked here: dispatch sees a new Python object for the generator
            _check_generator(func, generator, args, kwargs)
        if func in (torch.Tensor.cuda, torch.Tensor.cpu, torch.Tensor.to):
            if func is torch.Tensor.cuda or func is torch.Tensor.cpu:
                device, dtype = CUDA if func is torch.Tensor.cuda else torch.device("cpu"), None
            elif len(args) > 1 and isinstance(args[1], torch.Tensor):  # .to(other): other's device and dtype
                device, dtype = _device_of(args[1]), args[1].dtype
            else:
                parsed = {k: v for k, v in kwargs.items() if k != "copy"}
                device, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **parsed)
            source = args[0]
            # (To the CPU too: C++ sees a CPU tensor and would hand back the stand-in itself.)
            if device is not None and (device.type == "cuda") != isinstance(source, CudaTensor):
                return torch.ops.aten._to_copy.default(source, dtype=dtype or source.dtype,
                                                       device=CUDA if device.type == "cuda" else device)
            if device is not None and dtype in (None, source.dtype) and not kwargs.get("copy"):
                return source
        elif func is torch.tensor or func is torch.as_tensor:
            device = kwargs.get("device")
            if device is not None and torch.device(device).type == "cuda":
                grad = bool(kwargs.get("requires_grad", False))  # a leaf, as on a GPU
                made = func(*args, **{**{k: v for k, v in kwargs.items() if k != "requires_grad"}, "device": "cpu"})
                moved = made if isinstance(made, CudaTensor) else torch.ops.aten._to_copy.default(made, device=CUDA)
                return moved.requires_grad_(True) if grad else moved
        return func(*args, **kwargs)


def _check_generator(func, generator, args, kwargs):
    """A random draw's generator must be of its output's device (the device argument's, else the first
    tensor's)."""
    device = kwargs.get("device")
    if device is None:
        first = next((t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor)), None)
        device = _device_of(first) if first is not None else torch.device("cpu")
    wanted, found = torch.device(device).type, generator.device.type
    if wanted != found:
        raise RuntimeError(f"Expected a '{wanted}' device type for generator but found '{found}' (in {func.__name__})")


def _check_devices(func, tensors):
    common = None
    for t in tensors:
        device = _device_of(t)
        if device.type == "cpu" and t.dim() == 0:  # CUDA kernels take CPU scalars
            continue
        if common is None:
            common = device
        elif device.type != common.type:
            raise DeviceMismatch(f"Expected all tensors to be on the same device, but found at least two devices, "
                                 f"{common} and {device}! (in {func})")


def _load(original):
    def load(f, map_location=None, **kwargs):
        target = map_location
        if isinstance(target, (str, torch.device)) and torch.device(target).type == "cuda":
            with torch._C.DisableTorchFunction(), _disable_current_modes():  # the unpickler's storage calls
                state = original(f, map_location="cpu", **kwargs)
            return pytree.tree_map(lambda t: t.to(CUDA) if isinstance(t, torch.Tensor) else t, state)
        return original(f, map_location=map_location, **kwargs)
    return load


class _Event:
    """torch.cuda.Event with timing: the host's clock (the stand-in runs synchronously)."""

    def __init__(self, enable_timing=False, **kwargs):
        self.time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.time - self.time) * 1000.0


def _save(original):
    # A GPU's checkpoint holds CUDA tensors that load anywhere with map_location; the stand-ins are
    # saved as the CPU tensors they hold.
    def save(obj, f, *args, **kwargs):
        plain = pytree.tree_map(lambda t: t.elem.clone() if isinstance(t, CudaTensor) else t, obj)
        return original(plain, f, *args, **kwargs)
    return save


def _autocast(original):
    class autocast(original):
        def __init__(self, device_type, *args, **kwargs):
            super().__init__("cpu" if device_type == "cuda" else device_type, *args, **kwargs)
    return autocast


@contextlib.contextmanager
def fake_cuda(monkeypatch=None):
    """Inside: device "cuda" is the stand-in (see the module docstring)."""
    properties = types.SimpleNamespace(name="Stand-in CUDA (CPU)", total_memory=80 * 2 ** 30, major=9, minor=0,
                                       multi_processor_count=132)
    patches = {
        (torch.cuda, "is_available"): lambda: True,
        (torch.cuda, "_lazy_init"): lambda: None,  # device="cuda" arguments call it first
        (torch.cuda, "device_count"): lambda: 1,
        (torch.cuda, "current_device"): lambda: 0,
        (torch.cuda, "get_device_name"): lambda device=None: properties.name,
        (torch.cuda, "get_device_properties"): lambda device=None: properties,
        (torch.cuda, "get_device_capability"): lambda device=None: (9, 0),
        (torch.cuda, "is_bf16_supported"): lambda *args, **kwargs: True,
        (torch.cuda, "synchronize"): lambda device=None: None,
        (torch.cuda, "empty_cache"): lambda: None,
        (torch.cuda, "max_memory_allocated"): lambda device=None: 0,
        (torch.cuda, "memory_allocated"): lambda device=None: 0,
        (torch.cuda, "reset_peak_memory_stats"): lambda device=None: None,
        (torch.cuda, "manual_seed"): lambda seed: None,
        (torch.cuda, "Event"): _Event,
        (torch.cuda, "mem_get_info"): lambda device=None: (64 * 2 ** 30, properties.total_memory),
        (torch.cuda, "manual_seed_all"): lambda seed: None,
        (torch, "load"): _load(torch.load),
        (torch, "save"): _save(torch.save),
        (torch, "autocast"): _autocast(torch.autocast),
        (torch.amp, "autocast"): _autocast(torch.amp.autocast),
    }
    real_generator = torch.Generator

    class generator(real_generator):  # a class still, for annotations like `torch.Generator | None`
        def __new__(cls, device="cpu"):
            return _FakeCudaGenerator() if torch.device(device).type == "cuda" else real_generator(device)

    saved = {key: getattr(*key) for key in patches}
    # Module.to() would otherwise keep each Parameter object and swap its .data, leaving a tensor that
    # says cpu; on a GPU it is a CUDA tensor either way.
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        for (owner, name), value in patches.items():
            setattr(owner, name, value)
        torch.Generator = generator
        with _MoveToCuda(), FakeCudaMode():
            yield
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
        torch.Generator = real_generator
        for (owner, name), value in saved.items():
            setattr(owner, name, value)


def main(argv):
    """`python tests/fake_cuda.py [--speed-bench] ARGS...`: the engine's command line (or, with
    --speed-bench, bench.speed_probe's) with "cuda" the stand-in, in its own process: a CPU-only torch
    aborts the whole process, not just the test, if some path still reaches a real CUDA call."""
    if argv[:1] == ["--speed-bench"]:
        from bench.speed_probe import main as run
        argv = argv[1:]
    else:
        from engine.cli import main as run
    with fake_cuda():
        return run(argv)


if __name__ == "__main__":
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1:]))
