"""Known answers for the engine's geometry: numerical gradients, NeuS weights, extraction, PLY."""
import math

import numpy as np
import torch

from engine.config import preset
from engine.extract import extract_mesh
from engine.metrics import chamfer
from engine.nn.model import SDFModel, central_differences
from engine.io.ply import read_triangles, write_ply
from engine.render import OccupancyGrid, neus_alpha, render_rays, sphere_chord
from engine.train.schedules import active_levels, curvature_schedule, numerical_step


def sphere_sdf(x, center=(0.1, -0.2, 0.05), radius=0.6):
    return (x - torch.as_tensor(center, dtype=x.dtype)).norm(dim=-1) - radius


def test_numerical_gradient_of_an_analytic_sdf():
    torch.manual_seed(0)
    x = torch.rand(500, 3, dtype=torch.float64) * 1.6 - 0.8
    x = x[(x - torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)).norm(dim=-1) > 0.2]
    center = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    value, _, grad, lap = central_differences(lambda p: (sphere_sdf(p.double(), center, 0.6), p), x, 1e-3, True)
    r = (x - center).norm(dim=-1, keepdim=True)
    assert torch.allclose(value, r[:, 0] - 0.6)
    assert (grad - (x - center) / r).abs().max() < 1e-3
    assert (lap - 2.0 / r[:, 0]).abs().max() < 1e-2  # Laplacian of |x| in 3D


def test_numerical_gradient_step_and_levels_follow_the_schedule():
    cfg = preset("cpu")
    model = SDFModel(cfg)
    every, start = cfg.train.level_every, cfg.train.start_levels
    resolutions = model.sdf.grid.resolutions
    steps = [0, every - 1, every, 10 * every]
    levels = [active_levels(s, cfg, cfg.encoding.levels) for s in steps]
    assert levels == [start, start, start + 1, cfg.encoding.levels]
    # eps: the coarsest cell at step 0, shrinking exponentially to the finest cell by the step the last
    # level opens, and never finer than the finest active level's cell.
    all_open = (cfg.encoding.levels - start) * every
    assert math.isclose(numerical_step(0, cfg, resolutions), 2.0 / resolutions[0])
    third = numerical_step(all_open // 3, cfg, resolutions)
    assert math.isclose(third, 2.0 / resolutions[3])  # 9 levels to cross in 3 thirds
    assert math.isclose(numerical_step(all_open // 6, cfg, resolutions),
                        2.0 / math.sqrt(resolutions[1] * resolutions[2]))
    for step in range(0, 2 * all_open, 7):
        model.sdf.grid.set_active_levels(active_levels(step, cfg, cfg.encoding.levels))
        assert numerical_step(step, cfg, resolutions) >= model.sdf.finest_cell() - 1e-12
    for step in (all_open, all_open + 1, 3 * all_open):
        assert math.isclose(numerical_step(step, cfg, resolutions), 2.0 / resolutions[-1])
    series = [numerical_step(s, cfg, resolutions) for s in range(0, 2 * all_open, 7)]
    assert all(a >= b for a, b in zip(series, series[1:])) and series[0] > series[-1]
    everything = preset("cpu")
    everything.train.start_levels = everything.encoding.levels  # no progressive levels: the finest cell
    assert math.isclose(numerical_step(0, everything, resolutions), 2.0 / resolutions[-1])
    # The curvature weight warms up, then shrinks as levels open.
    w = [curvature_schedule(s, cfg) for s in (0, cfg.train.level_every // 2, cfg.train.level_every,
                                                 5 * cfg.train.level_every)]
    assert w[0] == 0 < w[1] < w[2] and w[3] < w[2]


def test_geometric_initialisation_is_a_sphere():
    cfg = preset("cpu")
    torch.manual_seed(0)
    model = SDFModel(cfg)
    dirs = torch.randn(400, 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        for r in (0.1, 0.3, 0.5, 0.7, 0.9):
            sdf, _ = model.sdf(dirs * r)
            # One softplus layer approximates |x| - r0 on average over directions.
            assert abs(float(sdf.mean()) - (r - cfg.network.init_radius)) < 0.05
        assert (model.sdf(dirs * 0.2)[0] < 0).all() and (model.sdf(dirs * 0.85)[0] > 0).all()


def test_neus_weights_on_a_plane_peak_at_the_surface():
    # A plane z = 0.3 seen head-on: the SDF along the ray is 0.3 - t (for a ray along +z from the origin).
    t = torch.linspace(0.0, 1.0, 201)
    sdf = 0.3 - t
    step = t[1] - t[0]
    alpha = neus_alpha(sdf, torch.full_like(t, -1.0), step, inv_s=200.0, cos_anneal=1.0)
    transmittance = torch.cumprod(torch.cat([torch.ones(1), 1 - alpha[:-1]]), 0)
    weights = alpha * transmittance
    assert abs(float(t[weights.argmax()]) - 0.3) <= float(step)
    assert abs(float(weights.sum()) - 1.0) < 1e-3
    assert abs(float((weights * t).sum()) - 0.3) < 2 * float(step)  # unbiased: expected depth at the surface


def test_sphere_chord():
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far, hit = sphere_chord(origins, dirs)
    assert hit.tolist() == [True, False]
    assert torch.allclose(near[0], torch.tensor(2.0)) and torch.allclose(far[0], torch.tensor(4.0))


def test_rendering_a_sphere_gives_its_silhouette():
    """At initialisation the SDF is a sphere of radius 0.5: rays through it are opaque, others empty."""
    cfg = preset("cpu")
    torch.manual_seed(0)
    model = SDFModel(cfg)
    model.sharpness.variance.data.fill_(math.log(300.0) / 10)
    grid = OccupancyGrid(32)
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.3, 0.0, -3.0], [0.7, 0.0, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    with torch.no_grad():
        out = render_rays(model, grid, origins, dirs, 256, cos_anneal=1.0, eps=model.sdf.finest_cell(),
                          jitter=False)
    assert out["opacity"][0] > 0.95 and out["opacity"][1] > 0.95 and out["opacity"][2] < 0.01


def test_blockwise_extraction_equals_one_block_and_finds_the_sphere():
    fn = lambda p: sphere_sdf(p)  # noqa: E731
    v1, f1 = extract_mesh(fn, 48, block=48)
    v2, f2 = extract_mesh(fn, 48, block=13)
    assert len(v1) == len(v2) and len(f1) == len(f2)
    assert np.allclose(np.sort(v1, axis=0), np.sort(v2, axis=0), atol=1e-6)
    radius = np.linalg.norm(v1 - np.array([0.1, -0.2, 0.05]), axis=1)
    assert np.abs(radius - 0.6).max() < 0.01
    # Outward normals: the signed volume of the closed surface is positive.
    tri = v1[f1]
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert abs(volume - 4 / 3 * math.pi * 0.6 ** 3) < 0.01


def test_extraction_respects_the_region():
    v, f = extract_mesh(lambda p: sphere_sdf(p), 40, inside_fn=lambda p: p[:, 0] < 0.1)
    assert v[:, 0].max() <= 0.1 + 2.0 / 40 + 1e-6


def test_ply_round_trip_and_chamfer(tmp_path):
    v, f = extract_mesh(lambda p: sphere_sdf(p), 32)
    colors = np.random.default_rng(0).random((len(v), 3))
    path = str(tmp_path / "m.ply")
    write_ply(path, v, f, colors)
    v2, f2, c2 = read_triangles(path)
    assert np.allclose(v2, v, atol=1e-6) and (f2 == f).all() and np.abs(c2 - colors).max() <= 0.5 / 255 + 1e-9
    assert chamfer(v2, f2, v, f, samples=4000) < 1e-3
    shifted = v + np.array([0.05, 0.0, 0.0])
    expected = 0.05 / np.linalg.norm(v.max(0) - v.min(0))
    assert 0.3 * expected < chamfer(shifted, f, v, f, samples=4000) < 1.01 * expected


def test_largest_component_drops_the_small_piece():
    from engine.extract import largest_component
    big = extract_mesh(lambda p: sphere_sdf(p, (0.0, 0.0, 0.0), 0.5), 32)
    small = extract_mesh(lambda p: sphere_sdf(p, (0.0, 0.0, 0.0), 0.2), 16)
    vertices = np.concatenate([big[0], small[0] + 2.0])
    faces = np.concatenate([big[1], small[1] + len(big[0])])
    v, f = largest_component(vertices, faces)
    assert len(v) == len(big[0]) and len(f) == len(big[1]) and v.max() < 1.0


def test_downscaled_view_keeps_projections():
    from engine.data import downscaled_view, project
    from engine.io.rig import View
    K = np.array([[300.0, 0, 157.3], [0, 310.0, 101.9], [0, 0, 1]])
    c2w = np.eye(4)
    view = View(image_path="x.png", width=320, height=200, K=K, c2w=c2w)
    small = downscaled_view(view, 4)
    assert (small.width, small.height) == (80, 50)
    points = np.random.default_rng(0).uniform(-1, 1, (20, 3)) + [0, 0, 4]
    full_px, _ = project(view, points)
    small_px, _ = project(small, points)
    assert np.allclose(small_px, full_px / 4, atol=1e-9)  # pixel edges scale, centres stay at +0.5


def test_background_samples_lie_outside_the_sphere_and_recede():
    from engine.nn.background import inverted_sphere_samples
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far, hit = sphere_chord(origins, dirs)
    t_start = torch.where(hit, far, (-(origins * dirs).sum(-1)).clamp_min(0.0))
    t = inverted_sphere_samples(origins, dirs, t_start, 16, jitter=True, generator=torch.Generator().manual_seed(0))
    x = origins[:, None] + t[..., None] * dirs[:, None]
    r = x.norm(dim=-1)
    assert (t >= t_start[:, None] - 1e-5).all() and (r >= 1.0 - 1e-4).all()
    assert (r[:, 1:] > r[:, :-1]).all() and r[:, -1].min() > 10  # out towards infinity (1/r spaced)
    assert torch.allclose(t[0, 0], torch.tensor(4.0), atol=0.3)     # starts where the ray leaves the sphere


def test_background_model_fills_what_the_surface_leaves_uncovered():
    cfg = preset("cpu")
    torch.manual_seed(0)
    model = SDFModel(cfg, background=True)
    grid = OccupancyGrid(16)
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.9, 0.9, -3.0]])  # through the sphere of radius 0.5; past it
    dirs = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    model.sharpness.variance.data.fill_(math.log(300.0) / 10)
    with torch.no_grad():
        out = render_rays(model, grid, origins, dirs, 128, cos_anneal=1.0, eps=model.sdf.finest_cell(), jitter=False)
        behind = model.background(origins, dirs, torch.tensor([0.0, 3.0]), jitter=False)
    assert out["opacity"][0] > 0.95 and out["opacity"][1] < 1e-3
    assert torch.allclose(out["rgb"][1], behind[1], atol=1e-3)  # the miss shows the background NeRF


def test_inference_rendering_matches_the_training_path():
    """Without gradients the renderer skips normals where the density saturates: same image."""
    cfg = preset("cpu")
    torch.manual_seed(1)
    model = SDFModel(cfg)
    model.sdf.grid.table.data.normal_(0, 0.05)  # some detail on top of the sphere
    model.sharpness.variance.data.fill_(math.log(80.0) / 10)
    grid = OccupancyGrid(32)
    origins = torch.tensor([[0.0, 0.0, -3.0]]).repeat(64, 1)
    target = torch.stack([torch.linspace(-0.7, 0.7, 64), torch.linspace(0.5, -0.5, 64), torch.zeros(64)], -1)
    dirs = torch.nn.functional.normalize(target - origins, dim=-1)
    kwargs = dict(cos_anneal=1.0, eps=model.sdf.finest_cell(), jitter=False)
    with torch.enable_grad():
        full = render_rays(model, grid, origins, dirs, 128, **kwargs)
    with torch.no_grad():
        fast = render_rays(model, grid, origins, dirs, 128, **kwargs)
    # The training path also carries NeuS's 1e-5 opacity floor per sample (128 samples: ~1.3e-3).
    assert (full["opacity"].detach() - fast["opacity"]).abs().max() < 2e-3
    assert (full["rgb"].detach() - fast["rgb"]).abs().max() < 2e-3
    assert full["opacity"].max() > 0.9  # the rays do cross the surface
