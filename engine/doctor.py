"""`python -m engine doctor`: can this Python run the engine, and on what?

Standard library only at import time: it must answer in a Python that has no torch (or no numpy),
which is exactly the Python a user needs told about. One JSON object on stdout, one line.
"""
import contextlib
import importlib
import json
import platform
import sys

from .io import protocol

# (module to import, pip name): what the engine cannot train without, and what it can.
REQUIRED = (("torch", "torch"), ("numpy", "numpy"), ("mcubes", "PyMCubes"), ("PIL", "pillow"))
# Calibration (engine.calibrate) needs pycolmap, PyAV for videos and pillow-heif for HEIC photographs;
# export (engine.export) fast-simplification, xatlas and usd-core (pxr); training needs none of them.
OPTIONAL = (("trimesh", "trimesh"), ("pycolmap", "pycolmap"), ("av", "av"), ("pillow_heif", "pillow-heif"),
            ("fast_simplification", "fast-simplification"), ("xatlas", "xatlas"), ("pxr", "usd-core"))
SETUP_HINT = ("press Install Engine in Preferences > Add-ons > Marble (in a checkout, python3 build.py setup "
              "makes a .venv with all of them)")


def missing_module_message(module):
    """The error a command gives when the engine's Python lacks a package (`module` as imported)."""
    pip = dict(REQUIRED + OPTIONAL).get(module.split(".")[0], module)
    return (f"the engine's Python ({sys.executable}) has no {pip}: press Install Engine in Preferences > "
            f"Add-ons > Marble (or choose another Python interpreter there; in a checkout, run "
            f"`python3 build.py setup` to make a .venv with the engine's packages)")


def engine_package(module):
    """Whether an import name (e.g. exc.name of a ModuleNotFoundError) is one of the engine's packages."""
    return bool(module) and module.split(".")[0] in dict(REQUIRED + OPTIONAL)


def _importable(name):
    if name == "pycolmap":
        import zlib  # noqa: F401  (pycolmap's own zlib must not come first: see engine.calibrate.sfm)
    try:
        importlib.import_module(name)
    except Exception:  # not installed, or installed but broken (a missing shared library): unusable either way
        return False
    return True


def diagnose():
    """The report as a dict (see main)."""
    # Packages printing on import must not spoil the one line of JSON on stdout.
    with contextlib.redirect_stdout(sys.stderr):
        missing = [pip for module, pip in REQUIRED if not _importable(module)]
        optional_missing = [pip for module, pip in OPTIONAL if not _importable(module)]
        torch_version = device = gpu = memory = None
        backend, backends, unusable = "torch", ["torch"], {}
        if "torch" not in missing:
            import torch
            torch_version = torch.__version__
            if torch.cuda.is_available():
                device, gpu = "cuda", torch.cuda.get_device_name(0)
                memory = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
            if "numpy" not in missing:
                # The encoding backends this Python can run, best first: what `--backend auto` takes.
                # On a GPU, Triton is listed only when its kernels compile and agree with torch here.
                from .nn.backends import available_backends, kernel_problem
                from .config import preset
                fast = preset("fast")
                backends = []
                for name in available_backends(device or "cpu"):
                    problem = kernel_problem(name, device or "cpu", fast.encoding.features,
                                             fast.network.sdf_hidden, half_table=name == "triton")
                    if problem is None:
                        backends.append(name)
                    else:
                        unusable[name] = problem
                backend = backends[0]
    device = device or "cpu"
    if missing:
        message = f"missing packages: {', '.join(missing)}; install them into this Python ({SETUP_HINT})"
    elif device == "cuda":
        message = f"torch {torch_version} on {gpu} ({memory:g} GB); backend {backend}"
        message += "".join(f"; {name} unusable here: {why}" for name, why in unusable.items())
    else:
        message = f"torch {torch_version} on CPU (no CUDA GPU); backend {backend}"
    return {"ok": not missing, "python": sys.executable, "python_version": platform.python_version(),
            "torch": torch_version, "device": device, "gpu": gpu, "gpu_memory_gb": memory, "backend": backend,
            "backends": backends, "unusable_backends": unusable, "missing": missing,
            "optional_missing": optional_missing, "message": message}


def main():
    """Print the report; exit 0 when the engine can run here, 2 when packages are missing."""
    report = diagnose()
    print(json.dumps(report, separators=(",", ":")), flush=True)
    return protocol.EXIT_OK if report["ok"] else protocol.EXIT_BAD_INPUT
