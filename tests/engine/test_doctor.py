"""`python -m engine doctor`: one JSON line saying whether this Python can run the engine, also (and
above all) in a Python that has no torch."""
import json
import os
import subprocess
import sys

from conftest import REPO


def hide_modules(folder, *names):
    """A folder that, first on PYTHONPATH, makes `import NAME` fail as it does where NAME is not installed."""
    for name in names:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        with open(os.path.join(folder, name, "__init__.py"), "w") as f:
            f.write(f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    return str(folder)


def doctor(hidden=None):
    path = os.pathsep.join([hidden, REPO] if hidden else [REPO])
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "engine", "doctor"], cwd=REPO, env=env, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"doctor must print exactly one line:\n{proc.stdout}\n{proc.stderr}"
    return proc.returncode, json.loads(lines[0]), proc.stderr


def test_doctor_reports_this_python():
    import torch
    code, report, err = doctor()
    assert code == 0, err
    assert report["ok"] is True and report["missing"] == []
    assert report["python"] == sys.executable and report["python_version"] == "%d.%d.%d" % sys.version_info[:3]
    assert report["torch"] == torch.__version__
    if torch.cuda.is_available():
        assert report["device"] == "cuda" and report["gpu"] == torch.cuda.get_device_name(0)
        assert report["gpu_memory_gb"] > 0 and report["backend"] in ("tcnn", "triton", "torch")
    else:
        assert (report["device"], report["gpu"], report["gpu_memory_gb"]) == ("cpu", None, None)
        assert report["backend"] == "numba"  # the compiled CPU kernels (a pinned engine package)
        assert report["message"] == f"torch {torch.__version__} on CPU (no CUDA GPU); backend numba"
    assert isinstance(report["optional_missing"], list)
    assert report["backends"][0] == report["backend"] and "torch" in report["backends"]


def test_doctor_without_torch(tmp_path):
    code, report, err = doctor(hide_modules(tmp_path / "hidden", "torch"))
    assert code == 2, err
    assert report["ok"] is False and report["missing"] == ["torch"] and report["torch"] is None
    assert (report["device"], report["gpu"], report["backend"]) == ("cpu", None, "torch")
    assert "torch" in report["message"] and "build.py setup" in report["message"], report["message"]
    assert "Traceback" not in err


def test_doctor_in_a_bare_python(tmp_path):
    """Neither torch nor numpy (a system Python): the doctor still answers, naming both."""
    code, report, err = doctor(hide_modules(tmp_path / "hidden", "torch", "numpy"))
    assert code == 2, err
    assert report["ok"] is False and {"torch", "numpy"} <= set(report["missing"])
    assert report["message"].startswith("missing packages: torch, numpy")
