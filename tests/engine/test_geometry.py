"""Known answers for the engine's geometry: numerical gradients, NeuS weights, extraction, PLY."""
import math

import numpy as np
import torch

from engine.config import preset
from engine.extract import extract_mesh
from engine.metrics import chamfer
from engine.nn.encoding import level_resolutions
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


def test_tetrahedral_taps_give_the_gradient_and_laplacian_of_an_analytic_sdf():
    torch.manual_seed(0)
    center = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    x = torch.rand(500, 3, dtype=torch.float64) * 1.6 - 0.8
    x = x[(x - center).norm(dim=-1) > 0.2]
    value, _, grad, lap = central_differences(lambda p: (sphere_sdf(p.double(), center, 0.6), p), x, 1e-3, True,
                                              taps=4)
    r = (x - center).norm(dim=-1, keepdim=True)
    assert torch.allclose(value, r[:, 0] - 0.6)
    assert (grad - (x - center) / r).abs().max() < 1e-3
    assert (lap - 2.0 / r[:, 0]).abs().max() < 1e-2
    # At any step, for a quadratic x^T A x + b x: the Laplacian 2 trace(A) exactly from either set of taps;
    # the gradient 2 A x + b exactly from the axis taps, and from the tetrahedral ones when A is diagonal
    # (a tetrahedron is not symmetric about its centre: mixed second derivatives bias its gradient by O(eps)).
    b = torch.tensor([0.4, -0.1, 0.25], dtype=torch.float64)
    for a, tetrahedral_exact in ((torch.diag(torch.tensor([1.0, -2.0, 0.7], dtype=torch.float64)), True),
                                 (torch.tensor([[1.0, 0.3, -0.2], [0.3, -2.0, 0.5], [-0.2, 0.5, 0.7]],
                                               dtype=torch.float64), False)):
        quadratic = lambda p: (((p @ a) * p).sum(-1) + p @ b, p)  # noqa: E731
        for taps in (6, 4):
            _, _, grad, lap = central_differences(quadratic, x, 0.3, True, taps=taps)
            assert torch.allclose(grad, 2 * x @ a + b, atol=1e-6) == (taps == 6 or tetrahedral_exact)
            assert torch.allclose(lap, torch.full_like(lap, 2 * float(a.trace())), atol=1e-6)


def test_the_model_gives_the_same_gradient_from_6_taps_and_from_4():
    cfg = preset("cpu")
    torch.manual_seed(0)
    model = SDFModel(cfg)
    model.sdf.grid.table.data.normal_(0.0, 1e-2)
    x = torch.rand(300, 3) * 1.2 - 0.6
    eps = 1e-3
    with torch.no_grad():
        sdf6, grad6, feat6, _ = model.sdf.with_gradient(x, eps, taps=6)
        sdf4, grad4, feat4, _ = model.sdf.with_gradient(x, eps, taps=4)
    assert torch.equal(sdf6, sdf4) and torch.equal(feat6, feat4)
    assert (grad6 - grad4).norm(dim=-1).max() < 0.05 * grad6.norm(dim=-1).mean()


def test_level_resolutions_reach_the_finest_exactly():
    for name, finest in (("cpu", 256), ("fast", 2048), ("quality", 2048)):
        assert level_resolutions(preset(name).encoding)[-1] == finest, name


def test_numerical_step_and_curvature_weight_follow_the_levels():
    """Neuralangelo's schedules: eps is the cell of the finest active level (a level opens when eps reaches
    its cell); the curvature weight warms up linearly over the first level_every steps, then is divided by
    the growth factor for every step eps takes, ending at 1 / (finest / base) of its value: 1/64 for the
    quality preset."""
    for name in ("cpu", "quality"):
        cfg = preset(name)
        every, start, levels = cfg.train.level_every, cfg.train.start_levels, cfg.encoding.levels
        resolutions = level_resolutions(cfg.encoding)
        growth = (cfg.encoding.finest_resolution / cfg.encoding.base_resolution) ** (1 / (levels - 1))
        assert [active_levels(s, cfg, levels) for s in (0, every - 1, every, 100 * every)] == \
            [start, start, start + 1, levels]
        for step in (0, every // 2, every, 3 * every + 1, (levels - start) * every, 100 * every):
            active = active_levels(step, cfg, levels)
            assert math.isclose(numerical_step(step, cfg, resolutions), 2.0 / resolutions[active - 1])
            expected = min(1.0, step / every) / growth ** (active - 1)
            assert math.isclose(curvature_schedule(step, cfg), expected, rel_tol=1e-12)
        # After the warm-up the weight is proportional to eps: it follows the step size.
        ratios = [curvature_schedule(s, cfg) / numerical_step(s, cfg, resolutions)
                  for s in range(every, (levels - start + 2) * every, every // 2)]
        assert max(ratios) / min(ratios) < 1.02  # (eps is 2 / floor(resolution): 2% off a pure power)
    quality = preset("quality")
    end = curvature_schedule(100 * quality.train.level_every, quality)
    assert math.isclose(end, 1 / 64)
    assert math.isclose(numerical_step(0, quality, level_resolutions(quality.encoding)),
                        2.0 / math.floor(32 * growth ** 3 * (1 + 1e-9)))
    assert preset("quality").train.color_weight == 3.0  # Neuralangelo's L1 times 3


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
