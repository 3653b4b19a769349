"""The Numba CPU hash encoding (engine.nn.hashgrid_numba) against the torch reference
(HashGrid.torch_forward): values, the table's and the points' gradients, taps, frozen tables, points
outside the unit cube."""
import importlib
import sys

import pytest
import torch

from engine.nn.encoding import TAP_OFFSETS, HashGrid, HashGridConfig

EPS = 1e-2
AXIS_TAPS = [(0.0, 0.0, 0.0)] + [tuple(EPS * c for c in o) for o in TAP_OFFSETS]
TETRAHEDRAL_TAPS = [(0.0, 0.0, 0.0)] + [tuple(EPS * c for c in o)
                                        for o in ((1, -1, -1), (-1, -1, 1), (-1, 1, -1), (1, 1, 1))]
TAPS = {"K1": [(0.0, 0.0, 0.0)], "K7": AXIS_TAPS, "K5": TETRAHEDRAL_TAPS}


@pytest.fixture(scope="module")
def hn(tmp_path_factory):
    """The module, its on-disk JIT cache in a temporary folder. numba picks a function's cache folder
    when the module defines it (NUMBA_CACHE_DIR as numba's config last read it), so the variable is
    set and the config re-read before the first import; a module imported earlier in the session
    keeps the folder its importer chose."""
    numba = pytest.importorskip("numba", reason="numba does not import: the numba encoding is unavailable")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NUMBA_CACHE_DIR", str(tmp_path_factory.mktemp("numba-cache")))
        numba.core.config.reload_config()
        module = sys.modules.get("engine.nn.hashgrid_numba") or importlib.import_module("engine.nn.hashgrid_numba")
        assert module.available()
        yield module
    numba.core.config.reload_config()


def make_grid(active, features=2):
    # 6 levels 4..64: the first two (5^3, 7^3 <= 1024 rows) are dense, the rest hashed.
    grid = HashGrid(HashGridConfig(levels=6, features=features, log2_table=10, base_resolution=4, finest_resolution=64))
    assert 0 < grid.dense_levels < grid.cfg.levels
    with torch.no_grad():
        grid.table.normal_()  # values of order 1, so that 1e-5 means something
    grid.set_active_levels(active)
    return grid


def points(n=300, seed=0):
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, generator=generator)
    # The cube's faces and corners (the last cell is closed) and points just outside it.
    u[:6] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [-0.003, 0.5, 1.004], [1.02, -0.01, 0.3],
                          [0.005, 0.995, 0.5], [0.3, 1.0, 0.0]])
    return u


def reference(grid, u, offsets):
    """torch_forward on the K * N tap positions, tap-major."""
    return grid.torch_forward((u[None] + offsets[:, None]).reshape(-1, 3))


def assert_relative(actual, expected, tolerance):
    scale = expected.abs().max().clamp_min(1e-12)
    assert (actual - expected).abs().max() <= tolerance * scale, float((actual - expected).abs().max() / scale)


@pytest.mark.parametrize("taps", list(TAPS))
@pytest.mark.parametrize("active", [6, 3])
def test_forward_matches_torch(hn, taps, active):
    grid = make_grid(active)
    u = points()
    offsets = torch.tensor(TAPS[taps])
    out = hn.encode(grid, u, offsets)
    expected = reference(grid, u, offsets)
    assert out.shape == (len(offsets) * len(u), 12) and out.dtype == torch.float32
    assert (out - expected).abs().max() <= 1e-5
    assert (out[:, active * 2:] == 0).all()


@pytest.mark.parametrize("groups", [None, 1, 3])  # None: the thread-count choice; 3: per-group buffers
@pytest.mark.parametrize("taps,active,features", [("K1", 6, 2), ("K7", 3, 2), ("K5", 4, 3)])
def test_gradients_match_torch_autograd(hn, monkeypatch, taps, active, features, groups):
    if groups is not None:
        monkeypatch.setattr(hn, "_groups", lambda *args: groups)
    grid = make_grid(active, features)
    offsets = torch.tensor(TAPS[taps])
    u = points(seed=1).requires_grad_(True)
    out = hn.encode(grid, u, offsets)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    grad_u, grad_table = torch.autograd.grad(out, [u, grid.table], upstream)
    u_ref = u.detach().clone().requires_grad_(True)
    ref_u, ref_table = torch.autograd.grad(reference(grid, u_ref, offsets), [u_ref, grid.table], upstream)
    assert_relative(grad_table, ref_table, 1e-4)
    assert_relative(grad_u, ref_u, 1e-4)
    # Inactive levels get no gradient; a point just outside the cube none along its clamped axes.
    if active < grid.cfg.levels:
        assert (grad_table[grid.row_offsets[active]:] == 0).all()
    if taps == "K1":
        assert grad_u[2, 0] == 0 and grad_u[2, 2] == 0 and grad_u[3, 0] == 0 and grad_u[3, 1] == 0
        assert grad_u[2, 1] != 0 and grad_u[3, 2] != 0


def test_frozen_table_gets_no_gradient(hn):
    grid = make_grid(5)
    grid.table.requires_grad_(False)
    offsets = torch.tensor(AXIS_TAPS)
    u = points(seed=3).requires_grad_(True)
    out = hn.encode(grid, u, offsets)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    out.backward(upstream)
    assert grid.table.grad is None
    u_ref = u.detach().clone().requires_grad_(True)
    reference(grid, u_ref, offsets).backward(upstream)
    assert_relative(u.grad, u_ref.grad, 1e-4)


def test_table_gradient_alone(hn):
    grid = make_grid(6)
    u = points(seed=5)  # positions without a gradient: the table's alone is computed
    out = hn.encode(grid, u, torch.tensor(TETRAHEDRAL_TAPS))
    out.square().sum().backward()
    ref_grid = make_grid(6)
    with torch.no_grad():
        ref_grid.table.copy_(grid.table)
    reference(ref_grid, u, torch.tensor(TETRAHEDRAL_TAPS)).square().sum().backward()
    assert_relative(grid.table.grad, ref_grid.table.grad, 1e-4)


def test_no_points(hn):
    grid = make_grid(6)
    u = torch.zeros(0, 3, requires_grad=True)
    out = hn.encode(grid, u, torch.tensor(AXIS_TAPS))
    assert out.shape == (0, 12)
    out.sum().backward()
    assert u.grad.shape == (0, 3) and (grid.table.grad == 0).all()
