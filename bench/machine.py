"""The machine a benchmark ran on (standard library only): the one machine_info."""
import os
import platform
import subprocess

from tools.env import has_nvidia_gpu


def cpu_model():
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_gpu_name():
    """The first NVIDIA GPU's name from nvidia-smi, or None."""
    if not has_nvidia_gpu():
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def machine_info(gpu=None):
    """{"cpu": model, "cores": count, "gpu": name or None}; `gpu` given (e.g. torch's name for the
    device) saves asking nvidia-smi."""
    return {"cpu": cpu_model(), "cores": os.cpu_count() or 1, "gpu": gpu or nvidia_gpu_name()}
