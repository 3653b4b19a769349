"""The pinned packages: the one place their versions live (standard library only, data).

The build tools (tools/env.py: the checkout's .venv) and the add-on's Install Engine
(addon/engine_install.py: the user's engine environment) both read them; the extension zip carries this
file with the engine, so what Blender installs is exactly what the tests ran with.
"""
import sys

PYTHON_VERSION = (3, 11)  # the bpy wheel and the Python Blender 4.2 to 5.0 bundle

# What `python -m engine` needs. torch: on a machine without an NVIDIA GPU pip picks the CPU build of
# this version where one is offered (TORCH_CPU_INDEX, a local wheel); with a GPU, the default index's.
ENGINE_PINS = {
    "torch": "2.13.0",
    "numpy": "1.26.4",      # bpy 5.0 needs numpy < 2
    "trimesh": "4.8.3",
    "PyMCubes": "0.1.6",
    "pillow": "12.0.0",
    "scipy": "1.15.3",      # k-d tree for exact point-to-surface distances (engine.metrics)
    "pycolmap": "4.2.1",    # calibration: COLMAP's SIFT, matching and mappers (engine.calibrate)
    "av": "18.1.0",         # PyAV: video frames for calibration (19.x has no wheel for Python 3.11)
    "pillow-heif": "1.8.1", # HEIC photographs from phones
    "fast-simplification": "0.2.0",  # quadric decimation of the extracted surface (engine export)
    "xatlas": "0.0.11",     # UV unwrapping for the baked texture (engine export)
    "usd-core": "26.11",    # a dynamic job as one USD file of time-sampled meshes (engine export)
    "numba": "0.68.1",      # the CPU kernels of the hash encoding (engine/nn/hashgrid_numba.py); brings llvmlite
    "triton": "3.7.1",      # the GPU kernels' compiler (the version torch 2.13's CUDA build pins); on the CPU
                            # its interpreter runs the kernels for the tests (TRITON_INTERPRET=1)
}
# What only the checkout's .venv needs: Blender as a module (add-on tests, the extension build) and tests.
DEVELOPER_PINS = {
    "bpy": "5.0.1",
    "pytest": "9.2.0",
    "hypothesis": "6.170.17",  # property-based fuzzing of the rig readers (tests/io/test_rig_fuzz.py)
}
# Pins installed only where the package has wheels (Triton: Linux).
PLATFORM_PINS = {"triton": ("linux",)}
# Import names that differ from the distribution's.
IMPORT_NAMES = {"PyMCubes": "mcubes", "pillow": "PIL", "pillow-heif": "pillow_heif",
                "fast-simplification": "fast_simplification", "usd-core": "pxr"}
# torch's CPU builds (version 2.13.0+cpu sorts above the default index's 2.13.0, so pip takes it).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def for_platform(pins, platform=None):
    """`pins` less the packages `platform` (default: this one's sys.platform) has no wheels for."""
    platform = sys.platform if platform is None else platform
    return {name: version for name, version in pins.items()
            if name not in PLATFORM_PINS or platform.startswith(PLATFORM_PINS[name])}


def requirements(pins, platform=None):
    """pip's requirement strings (`name==version`) for this platform."""
    return [f"{name}=={version}" for name, version in for_platform(pins, platform).items()]
