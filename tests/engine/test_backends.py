"""Choosing the encoding backend (auto, --backend, doctor), and the tcnn backend's plumbing.

tiny-cuda-nn cannot be installed here (it is built from source against a CUDA toolkit), so the tcnn
backend is exercised against a stand-in `tinycudann` module with its Encoding interface, written in
torch: what is checked is what Marble passes to tiny-cuda-nn and does with its output and parameters.
"""
import io
import json
import math
import os
import sys
import types

import pytest
import torch
from conftest import make_rig, ring_cameras
from engine_process import assert_one_error, run_engine

from engine.nn import backends
from engine.config import InputError, preset
from engine.nn.encoding import HashGrid, HashGridConfig


class StandInEncoding(torch.nn.Module):
    """tinycudann.Encoding's interface: (n_input_dims, encoding_config, seed, dtype), a flat `params`
    parameter, forward on (N, 3) points in [0, 1]. Records the configurations it was given."""

    configs = []

    def __init__(self, n_input_dims, encoding_config, seed=1337, dtype=None):
        super().__init__()
        StandInEncoding.configs.append((n_input_dims, dict(encoding_config), dtype))
        c = encoding_config
        finest = round(c["base_resolution"] * c["per_level_scale"] ** (c["n_levels"] - 1))
        self.inner = HashGrid(HashGridConfig(levels=c["n_levels"], features=c["n_features_per_level"],
                                             log2_table=c["log2_hashmap_size"], base_resolution=c["base_resolution"],
                                             finest_resolution=finest))
        self.params = self.inner.table
        self.n_output_dims = self.inner.output_dim

    def forward(self, x):
        assert x.min() >= 0 and x.max() <= 1, "tiny-cuda-nn expects inputs in [0, 1]"
        return self.inner.torch_forward(x)


@pytest.fixture
def tinycudann(monkeypatch):
    module = types.ModuleType("tinycudann")
    module.Encoding = StandInEncoding
    StandInEncoding.configs = []
    monkeypatch.setitem(sys.modules, "tinycudann", module)
    return module


def test_auto_takes_numba_on_the_cpu_even_with_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.resolve_backend("auto", "cpu") == "numba"
    assert backends.available_backends("cpu")[:2] == ["numba", "torch"]
    monkeypatch.delenv("TRITON_INTERPRET")
    assert backends.available_backends("cpu") == ["numba", "torch"]
    monkeypatch.setitem(sys.modules, "numba", None)  # not installed: the torch reference
    assert backends.available_backends("cpu") == ["torch"]
    with pytest.raises(InputError, match="--backend numba: the numba package does not import"):
        backends.resolve_backend("numba", "cpu")
    with pytest.raises(InputError, match="the numba kernels run on the CPU"):
        backends.resolve_backend("numba", "cuda")


def test_named_backends_that_cannot_run_say_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setitem(sys.modules, "tinycudann", None)  # import fails
    with pytest.raises(InputError, match="--backend triton: Triton kernels run on CUDA GPUs"):
        backends.resolve_backend("triton", "cpu")
    with pytest.raises(InputError, match="--backend tcnn: tiny-cuda-nn runs on CUDA GPUs only"):
        backends.resolve_backend("tcnn", "cpu")
    with pytest.raises(InputError, match="tinycudann module does not import"):
        backends.resolve_backend("tcnn", "cuda")
    with pytest.raises(InputError, match="power of two of features"):
        backends.resolve_backend("triton", "cuda", features=3)
    with pytest.raises(InputError, match="unknown backend 'cuda'"):
        backends.resolve_backend("cuda", "cpu")
    assert backends.resolve_backend("torch", "cpu") == "torch"


def test_auto_prefers_tcnn_then_triton_on_a_gpu(tinycudann, monkeypatch):
    pytest.importorskip("triton")
    assert backends.available_backends("cuda") == ["tcnn", "triton", "torch"]
    assert backends.resolve_backend("auto", "cuda") == "tcnn"
    monkeypatch.setitem(sys.modules, "tinycudann", None)
    assert backends.resolve_backend("auto", "cuda") == "triton"
    assert backends.resolve_backend("auto", "cuda", features=3) == "torch"


def test_half_tables_by_default_only_for_triton_on_a_gpu():
    assert backends.half_table_enabled("auto", "triton", "cuda")
    assert not backends.half_table_enabled("auto", "triton", "cpu")
    assert not backends.half_table_enabled("auto", "torch", "cuda")
    assert not backends.half_table_enabled("auto", "tcnn", "cuda")  # tiny-cuda-nn has its own
    assert backends.half_table_enabled("on", "triton", "cpu") and not backends.half_table_enabled("off", "triton", "cuda")


def test_tcnn_backend_gets_the_preset_grid_and_owns_the_parameters(tinycudann):
    cfg = preset("fast").encoding
    grid = HashGrid(cfg)
    grid.set_backend("tcnn")
    dims, config, dtype = StandInEncoding.configs[-1]
    growth = math.exp(math.log(cfg.finest_resolution / cfg.base_resolution) / (cfg.levels - 1))
    assert dims == 3 and dtype == torch.float32
    assert config == {"otype": "HashGrid", "n_levels": 14, "n_features_per_level": 2, "log2_hashmap_size": 19,
                      "base_resolution": 16, "per_level_scale": pytest.approx(growth), "interpolation": "Linear"}
    assert grid.table is None and grid.table_parameters() == [grid.tcnn_encoding.params]
    assert [name for name, _ in grid.named_parameters()] == ["tcnn_encoding.params"]


def test_tcnn_backend_masks_inactive_levels_and_trains(tinycudann):
    from engine.nn.model import SDFModel
    cfg = preset("cpu")
    model = SDFModel(cfg)
    model.sdf.grid.set_backend("tcnn")
    grid = model.sdf.grid
    with torch.no_grad():
        grid.tcnn_encoding.params.normal_()
        model.sdf.layers[0].weight[:, 3:].normal_()  # the geometric initialisation starts the encoding silent
    grid.set_active_levels(3)
    u = torch.rand(50, 3) * 1.2 - 0.1  # taps step outside [0, 1]: clamped before tiny-cuda-nn sees them
    out = grid(u)
    assert out.shape == (50, 20) and (out[:, 6:] == 0).all() and (out[:, :6] != 0).any()
    groups = {g["name"]: g["params"] for g in model.param_groups(cfg.train)}
    assert groups["grid"] == [grid.tcnn_encoding.params]
    sdf, grad, feat, lap = model.sdf.with_gradient(torch.rand(40, 3) - 0.5, 0.02, curvature=True)
    (sdf.sum() + grad.square().sum() + lap.abs().sum()).backward()
    assert grid.tcnn_encoding.params.grad.abs().sum() > 0


def tiny_trainer(folder, backend):
    from engine.events import Emitter
    from engine.io.rig import load_rig
    from engine.session import Session
    from engine.train.trainer import Trainer
    cfg = preset("cpu")
    cfg.backend = backend
    rig = load_rig(make_rig(folder, ring_cameras(count=4, width=16, height=12, focal=14.0), name=backend))
    out = Emitter(stream=io.StringIO())
    trainer = Trainer(Session.checked(cfg, rig, str(folder / backend / "job"), out.warn, region=(0, 0, 0, 1)), out)
    trainer.load()
    return trainer


def test_a_checkpoint_of_another_table_layout_is_refused_with_the_way_out(tmp_path):
    trainer = tiny_trainer(tmp_path, "torch")
    path = trainer.save_checkpoint()
    state = torch.load(path, weights_only=False)
    assert state["backend"] == "torch"
    state["backend"] = "tcnn"
    torch.save(state, path)
    with pytest.raises(InputError, match="written by the tcnn encoding backend.*--backend tcnn"):
        trainer.load_checkpoint(path)


def test_cli_backend_flag(tmp_path, monkeypatch):
    rig = make_rig(tmp_path, ring_cameras(count=4, width=24, height=20, focal=30.0), name="tiny")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not torch.cuda.is_available():
        assert_one_error(*run_engine(["train", "--data", rig, "--out", str(tmp_path / "a"), "--backend", "triton"]),
                         "--backend triton", "CUDA")
        assert not os.path.exists(tmp_path / "a")  # refused before the job folder is made
    code, events, err = run_engine(["train", "--data", rig, "--out", str(tmp_path / "b"), "--backend", "torch",
                                    "--iterations", "2", "--resolution", "16"])
    assert code == 0, err
    started = events[0]
    assert started["backend"] == "torch" and started["half_table"] is False
    assert started["config"]["backend"] == "torch"


def test_kernels_that_fail_their_start_up_check_give_way_to_torch(monkeypatch):
    """On a GPU the chosen Triton kernels run once before training; a failure (a compiler error, a
    wrong result) becomes a warning and the torch backend, not a job that dies at its first step."""
    pytest.importorskip("triton")
    from engine.nn import kernel_check
    monkeypatch.setitem(sys.modules, "tinycudann", None)
    backends._triton_problem.cache_clear()
    checked = []

    def broken(device, features, sdf_hidden=None, half_table=False):
        checked.append((device, features, sdf_hidden, half_table))
        raise ValueError("cx is already defined. constexpr cannot be reassigned.\nmore")

    monkeypatch.setattr(kernel_check, "self_check", broken)
    warnings = []
    encoding = preset("fast").encoding
    try:
        assert backends.checked_backend("auto", "cuda", encoding, 64, warnings.append) == ("torch", False)
        assert checked == [("cuda", 2, 64, True)]
        assert len(warnings) == 1 and "triton kernels failed their start-up check" in warnings[0]
        assert "ValueError: cx is already defined" in warnings[0] and "more" not in warnings[0]
        # Checked once per process and variant: the trainer asks again when it builds the model.
        assert backends.checked_backend("triton", "cuda", encoding, 64, warnings.append) == ("torch", False)
        assert len(checked) == 1 and len(warnings) == 2
        monkeypatch.setattr(kernel_check, "self_check", lambda *args: None)
        backends._triton_problem.cache_clear()
        assert backends.checked_backend("auto", "cuda", encoding, 64, warnings.append) == ("triton", True)
        assert len(warnings) == 2
        # Nothing is checked off the GPU: torch is the reference, interpreted Triton a test tool.
        assert backends.kernel_problem("triton", "cpu") is None and backends.kernel_problem("torch", "cuda") is None
    finally:
        backends._triton_problem.cache_clear()


def test_the_doctor_lists_only_backends_whose_kernels_pass(monkeypatch):
    pytest.importorskip("triton")
    from engine import doctor
    monkeypatch.setitem(sys.modules, "tinycudann", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Stand-in GPU")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index=0: types.SimpleNamespace(total_memory=80 * 2 ** 30))
    monkeypatch.setattr(backends, "_triton_problem", lambda *args: "CompilationError: at 32:8")
    report = doctor.diagnose()
    assert report["backends"] == ["torch"] and report["backend"] == "torch"
    assert report["unusable_backends"] == {"triton": "CompilationError: at 32:8"}
    assert "triton unusable here: CompilationError" in report["message"]
    monkeypatch.setattr(backends, "_triton_problem", lambda *args: None)
    report = doctor.diagnose()
    assert report["backends"] == ["triton", "torch"] and report["unusable_backends"] == {}


def test_a_job_reopens_with_auto_where_its_backend_cannot_run(monkeypatch):
    """Resume, extract and evaluate read the backend the job ran with; moved to a machine that cannot run
    it (a numba job on a GPU, a triton job on a CPU) they go on with auto and say so. tcnn keeps its own."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    warnings = []
    assert backends.reopened_backend("torch", "cpu", 2, warnings.append) == "torch"
    assert backends.reopened_backend("auto", "cpu", 2, warnings.append) == "auto"
    assert backends.reopened_backend("numba", "cpu", 2, warnings.append) == "numba" and warnings == []
    assert backends.reopened_backend("triton", "cpu", 2, warnings.append) == "auto"
    assert backends.reopened_backend("numba", "cuda", 2, warnings.append) == "auto"
    assert backends.reopened_backend("tcnn", "cpu", 2, warnings.append) == "tcnn"
    assert len(warnings) == 2 and "triton" in warnings[0] and "numba" in warnings[1]
    assert all("--backend auto" in w for w in warnings)


def test_a_job_trained_with_a_gpu_backend_is_extracted_and_resumed_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rig = make_rig(tmp_path, ring_cameras(count=4, width=24, height=20, focal=30.0), name="tiny")
    job = str(tmp_path / "job")
    code, events, err = run_engine(["train", "--data", rig, "--out", job, "--backend", "torch",
                                    "--iterations", "2", "--resolution", "16"])
    assert code == 0, err
    config = os.path.join(job, "config.json")
    with open(config) as f:
        saved = json.load(f)
    saved["backend"] = "triton"  # as a job trained on a GPU writes it
    with open(config, "w") as f:
        json.dump(saved, f)
    for command in (["extract", job, "--resolution", "16"],
                    ["train", "--data", rig, "--out", job, "--resume", "--iterations", "3", "--resolution", "16"]):
        code, events, err = run_engine(command)
        assert code == 0, err
        warned = [e["message"] for e in events if e["event"] == "warning"]
        assert any("triton" in w and "--backend auto" in w for w in warned), warned
    started = next(e for e in events if e["event"] == "started")
    assert started["backend"] == backends.available_backends("cpu")[0]
