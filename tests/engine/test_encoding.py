"""The hash encoding against a naive per-point, per-corner implementation."""
import pytest
import torch

from engine.nn.encoding import HashGrid, HashGridConfig, level_resolutions, reference_encode


@pytest.mark.parametrize("cfg", [
    HashGridConfig(levels=6, features=2, log2_table=10, base_resolution=4, finest_resolution=64),  # dense + hashed
    HashGridConfig(levels=3, features=4, log2_table=14, base_resolution=2, finest_resolution=8),   # all dense
    HashGridConfig(levels=4, features=1, log2_table=6, base_resolution=16, finest_resolution=128),  # all hashed
])
def test_matches_naive_reference(cfg):
    torch.manual_seed(0)
    grid = HashGrid(cfg)
    grid.table.data.normal_()
    u = torch.rand(40, 3)
    u[0] = torch.tensor([0.0, 0.0, 0.0])
    u[1] = torch.tensor([1.0, 1.0, 1.0])  # the closed upper boundary
    assert torch.allclose(grid(u), reference_encode(grid, u), atol=1e-5)


def test_inactive_levels_output_zeros_and_get_no_gradient():
    cfg = HashGridConfig(levels=5, features=2, log2_table=12, base_resolution=4, finest_resolution=64)
    grid = HashGrid(cfg)
    grid.table.data.normal_()
    grid.set_active_levels(2)
    u = torch.rand(30, 3)
    out = grid(u)
    assert torch.allclose(out, reference_encode(grid, u), atol=1e-5)
    assert (out[:, 4:] == 0).all() and (out[:, :4] != 0).any()
    out.sum().backward()
    fine_rows = grid.row_offsets[2]
    assert (grid.table.grad[fine_rows:] == 0).all() and (grid.table.grad[:fine_rows] != 0).any()


def test_points_outside_the_cube_take_the_boundary_value():
    grid = HashGrid(HashGridConfig(levels=3, features=2, log2_table=12, base_resolution=4, finest_resolution=16))
    grid.table.data.normal_()
    inside = torch.tensor([[1.0, 0.5, 0.0]])
    outside = torch.tensor([[1.02, 0.5, -0.01]])
    assert torch.allclose(grid(outside), grid(inside))


def test_resolutions_grow_geometrically_from_base_to_finest():
    res = level_resolutions(HashGridConfig(levels=14, base_resolution=16, finest_resolution=2048))
    assert res[0] == 16 and res[-1] in (2047, 2048) and res == sorted(res)


def test_gradient_flows_to_the_table_and_the_points():
    grid = HashGrid(HashGridConfig(levels=4, features=2, log2_table=12, base_resolution=4, finest_resolution=32))
    grid.table.data.normal_()
    u = torch.rand(10, 3, requires_grad=True)
    grid(u).square().sum().backward()
    assert grid.table.grad.abs().sum() > 0 and u.grad.abs().sum() > 0
