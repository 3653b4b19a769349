"""The Triton hash-grid kernels against the torch backend, on fresh random inputs.

On a machine without a GPU the kernels run under Triton's interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1), so CI checks the very kernels a GPU runs; with a GPU they run on it.
"""
import io
import json
import math

import pytest
import torch

triton = pytest.importorskip("triton", reason="the triton package is not installed (it has Linux wheels only)")

from engine.nn.backends import triton_interpreted  # noqa: E402
from engine.nn.encoding import HashGrid, HashGridConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and not triton_interpreted(),
                                reason="no CUDA GPU and TRITON_INTERPRET is not set")

CONFIGS = {
    "dense+hashed": HashGridConfig(levels=6, features=2, log2_table=10, base_resolution=4, finest_resolution=64),
    "all dense, 4 features": HashGridConfig(levels=3, features=4, log2_table=14, base_resolution=2,
                                            finest_resolution=8),
    "all hashed, 1 feature": HashGridConfig(levels=4, features=1, log2_table=6, base_resolution=16,
                                            finest_resolution=128),
    "8 features (quality)": HashGridConfig(levels=3, features=8, log2_table=9, base_resolution=8,
                                           finest_resolution=40),
}


def grids(cfg, seed):
    """The same grid twice: one on the torch backend, one on triton (same table values)."""
    torch.manual_seed(seed)
    reference = HashGrid(cfg).to(DEVICE)
    reference.table.data.normal_()
    fused = HashGrid(cfg).to(DEVICE)
    fused.table.data.copy_(reference.table.data)
    fused.set_backend("triton")
    return reference, fused


def points(count, seed):
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(count, 3, generator=generator)
    # Corners, faces and the closed upper boundary, and a few just outside the cube (taps step there).
    u[:6] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.5, 1.0, 0.0],
                          [1.03, 0.5, -0.02], [-0.01, 1.2, 0.5]])
    return u.to(DEVICE)


def relative_error(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_and_backward_match_the_torch_backend(name):
    cfg = CONFIGS[name]
    reference, fused = grids(cfg, seed=len(name))
    u = points(257, seed=1)  # not a multiple of the block: the tail is masked
    u_ref, u_fused = u.clone().requires_grad_(True), u.clone().requires_grad_(True)
    expected, got = reference(u_ref), fused(u_fused)
    assert relative_error(got, expected) < 1e-6
    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    assert relative_error(fused.table.grad, reference.table.grad) < 1e-5
    assert relative_error(u_fused.grad, u_ref.grad) < 1e-4
    assert (u_fused.grad[4, [0, 2]] == 0).all() and (u_fused.grad[5, 1] == 0)  # clamped: no gradient outside


def test_inactive_levels_are_zero_and_untouched():
    reference, fused = grids(CONFIGS["dense+hashed"], seed=3)
    for grid in (reference, fused):
        grid.set_active_levels(2)
    u = points(100, seed=2)
    expected, got = reference(u), fused(u)
    assert relative_error(got, expected) < 1e-6 and (got[:, 4:] == 0).all()
    got.square().sum().backward()
    expected.square().sum().backward()
    fine_rows = int(fused.row_offsets[2])
    assert (fused.table.grad[fine_rows:] == 0).all()
    assert relative_error(fused.table.grad, reference.table.grad) < 1e-5


def test_a_frozen_table_gets_no_gradient_and_the_points_theirs():
    """The motion prediction freezes the network: the backward gives the positions their gradient and
    allocates none for the table."""
    reference, fused = grids(CONFIGS["dense+hashed"], seed=4)
    for grid in (reference, fused):
        grid.table.requires_grad_(False)
    u = points(200, seed=5)
    u_ref, u_fused = u.clone().requires_grad_(True), u.clone().requires_grad_(True)
    expected, got = reference.encode_taps(u_ref, 0.02), fused.encode_taps(u_fused, 0.02)
    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    assert fused.table.grad is None and reference.table.grad is None
    assert relative_error(u_fused.grad, u_ref.grad) < 1e-4


@pytest.mark.parametrize("name", ["dense+hashed", "8 features (quality)"])
def test_numerical_gradient_taps_in_one_launch(name):
    """encode_taps: the point and its 6 central-difference taps, tap-major, with their gradients."""
    reference, fused = grids(CONFIGS[name], seed=5)
    u = points(150, seed=3)
    eps = 0.013
    u_ref, u_fused = u.clone().requires_grad_(True), u.clone().requires_grad_(True)
    expected, got = reference.encode_taps(u_ref, eps), fused.encode_taps(u_fused, eps)
    assert got.shape == (7 * 150, reference.output_dim)
    assert relative_error(got, expected) < 1e-5
    # Row block k is the encoding at u + eps * TAP_OFFSETS[k - 1].
    plus_y = (u + torch.tensor([0.0, eps, 0.0], device=DEVICE))
    assert relative_error(got[3 * 150:4 * 150], reference(plus_y)) < 1e-5
    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    assert relative_error(fused.table.grad, reference.table.grad) < 1e-5
    assert relative_error(u_fused.grad, u_ref.grad) < 1e-4


def test_half_precision_tables_stay_within_float16_rounding():
    """float16 lookups: the encoding within float16's relative rounding (2^-11) of the float32 one;
    the table gradient does not depend on the table values, so it is unchanged."""
    reference, fused = grids(CONFIGS["dense+hashed"], seed=7)
    fused.set_backend("triton", half_table=True)
    u = points(300, seed=4)
    expected, got = reference(u), fused(u)
    assert 0 < relative_error(got, expected) < 2 ** -10
    got.sum().backward()
    expected.sum().backward()
    assert relative_error(fused.table.grad, reference.table.grad) < 1e-5
    # The float16 copy follows the optimiser's in-place updates.
    with torch.no_grad():
        fused.table.add_(1.0)
        reference.table.add_(1.0)
    assert relative_error(fused(u), reference(u)) < 2 ** -10


def sdf_networks(seed=0):
    from engine.config import preset
    from engine.nn.model import SDFNetwork
    cfg = preset("cpu")
    cfg.encoding = HashGridConfig(levels=5, features=2, log2_table=10, base_resolution=4, finest_resolution=48)
    torch.manual_seed(seed)
    reference = SDFNetwork(cfg.encoding, cfg.network).to(DEVICE)
    reference.grid.table.data.normal_(0.0, 0.1)
    with torch.no_grad():
        reference.layers[0].weight[:, 3:].normal_(0.0, 0.3)  # let the encoding matter
    fused = SDFNetwork(cfg.encoding, cfg.network).to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    fused.grid.set_backend("triton")
    return reference, fused


def test_sdf_gradient_and_laplacian_through_the_fused_taps():
    reference, fused = sdf_networks()
    x = (torch.rand(200, 3, generator=torch.Generator().manual_seed(8)) * 1.6 - 0.8).to(DEVICE)
    eps = 2.0 / 48
    expected = reference.with_gradient(x, eps, curvature=True)
    got = fused.with_gradient(x, eps, curvature=True)
    for a, b in zip(got, expected):
        assert relative_error(a, b) < 1e-4
    # Gradients reach the same parameters.
    (got[0].sum() + got[1].square().sum() + got[3].abs().sum()).backward()
    (expected[0].sum() + expected[1].square().sum() + expected[3].abs().sum()).backward()
    assert relative_error(fused.grid.table.grad, reference.grid.table.grad) < 1e-4
    assert relative_error(fused.layers[0].weight.grad, reference.layers[0].weight.grad) < 1e-4


def test_analytic_gradients_fall_back_to_the_twice_differentiable_reference():
    reference, fused = sdf_networks(seed=1)
    x = (torch.rand(64, 3, generator=torch.Generator().manual_seed(9)) * 1.6 - 0.8).to(DEVICE)
    expected = reference.with_gradient(x, 0.0, mode="analytic")
    got = fused.with_gradient(x, 0.0, mode="analytic")
    assert relative_error(got[1], expected[1]) < 1e-5
    got[1].square().sum().backward()  # the eikonal term needs the double backward
    assert fused.grid.table.grad.abs().sum() > 0
    assert fused.grid._reference_only is False  # only inside with_gradient


def small_trainer(folder, backend):
    """A Trainer with the cpu preset cut down to a handful of rays and levels (the interpreter is slow)."""
    from conftest import make_rig, ring_cameras
    from engine.config import preset
    from engine.events import Emitter
    from engine.io.rig import load_rig
    from engine.session import Session
    from engine.train.trainer import Trainer
    cfg = preset("cpu")
    cfg.device, cfg.backend = DEVICE, backend
    cfg.encoding = HashGridConfig(levels=4, features=2, log2_table=10, base_resolution=4, finest_resolution=32)
    cfg.train.rays_per_batch, cfg.render.samples_per_ray, cfg.render.occupancy_resolution = 12, 24, 16
    rig = load_rig(make_rig(folder / backend, ring_cameras(count=4, width=16, height=12, focal=14.0)))
    out = Emitter(stream=io.StringIO())
    trainer = Trainer(Session.checked(cfg, rig, str(folder / backend / "job"), out.warn, region=(0, 0, 0, 1)), out)
    trainer.load()
    return trainer


def test_training_steps_match_the_torch_backend(tmp_path):
    torch_trainer, triton_trainer = small_trainer(tmp_path, "torch"), small_trainer(tmp_path, "triton")
    assert triton_trainer.backend == "triton" and triton_trainer.model.sdf.grid.backend == "triton"
    for _ in range(3):
        expected, got = torch_trainer.train_step(), triton_trainer.train_step()
        assert math.isclose(got[0], expected[0], rel_tol=1e-3), (got, expected)
    assert relative_error(triton_trainer.model.sdf.grid.table.detach(),
                          torch_trainer.model.sdf.grid.table.detach()) < 1e-3
    # The checkpoint is the torch backend's: a triton job resumes (or extracts) on the torch backend.
    path = triton_trainer.save_checkpoint()
    resumed = small_trainer(tmp_path / "again", "torch")
    resumed.load_checkpoint(path)
    assert torch.equal(resumed.model.sdf.grid.table, triton_trainer.model.sdf.grid.table)


@pytest.mark.parametrize("active", [5, 2])
def test_fused_sdf_values_match_the_network(active):
    """Encoding + MLP in one kernel (queries without gradients) against the torch network."""
    reference, fused = sdf_networks(seed=2)
    for net in (reference, fused):
        net.grid.set_active_levels(active)
    x = (torch.rand(300, 3, generator=torch.Generator().manual_seed(10)) * 2.2 - 1.1).to(DEVICE)
    with torch.no_grad():
        expected = reference(x)[0]
        got = fused.value(x)
    assert relative_error(got, expected) < 1e-5
    assert torch.equal(reference.value(x), expected)  # the torch backend's value is the network's output 0
    with torch.enable_grad():  # under autograd the fused kernel is not used: gradients still flow
        assert fused.value(x).requires_grad


# -- the start-up check and the launches it makes ------------------------------------------------------

@pytest.mark.parametrize("half_table", [False, True])
@pytest.mark.parametrize("features,hidden", [(2, 64), (8, 256)])
def test_the_start_up_check_runs_every_launch_the_engine_makes(monkeypatch, features, hidden, half_table):
    """self_check (run before training on a GPU) launches exactly the variants engine.nn.triton_aot
    compiles ahead of time for this configuration, and they agree with torch."""
    from engine.nn import hashgrid_triton, kernel_check, triton_aot
    launched = set()

    class Recorder:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            def launch(*args, **constexprs):
                table = {torch.float32: "fp32", torch.float16: "fp16"}[args[1].dtype]
                launched.add(json.dumps([self.name, table, constexprs], sort_keys=True))
                return self.kernel[grid](*args, **constexprs)
            return launch

    for name in ("_encode_forward", "_encode_backward", "_sdf_value"):
        monkeypatch.setattr(hashgrid_triton, name, Recorder(name, getattr(hashgrid_triton, name)))
    kernel_check.self_check(DEVICE, features, hidden, half_table)
    table = "fp16" if half_table else "fp32"
    expected = {json.dumps(launch, sort_keys=True) for launch in triton_aot.launches(features, hidden)
                if launch[1] == table}
    assert launched == expected


def test_the_start_up_check_catches_a_wrong_kernel(monkeypatch):
    from engine.nn import hashgrid_triton, kernel_check
    real = hashgrid_triton.sdf_values
    monkeypatch.setattr(hashgrid_triton, "sdf_values", lambda *args: real(*args) + 0.1)
    with pytest.raises(RuntimeError, match="_sdf_value disagrees"):
        kernel_check.self_check(DEVICE, 2, 64)
