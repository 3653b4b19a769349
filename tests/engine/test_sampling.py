"""Known answers for the hierarchical sampler (NeuS's up-sampling), mixed precision and the
configuration overrides."""
import math

import pytest
import torch

from engine.config import InputError, preset
from engine.nn.model import SDFModel
from engine.nn.precision import mixed_precision_dtype
from engine.render import OccupancyGrid, hierarchical_samples, render_rays, sample_pdf, sphere_chord


def sphere_sdf(points, radius=0.6):
    return points.norm(dim=-1) - radius


def test_sample_pdf_inverts_the_cdf():
    bins = torch.linspace(0.0, 1.0, 11)[None].repeat(2, 1)
    weights = torch.zeros(2, 10)
    weights[0, 3] = 1.0   # all the mass in [0.3, 0.4]
    weights[1] = 1.0      # uniform
    samples = sample_pdf(bins, weights, 20)
    inside = (samples[0] >= 0.3 - 1e-6) & (samples[0] <= 0.4 + 1e-6)
    assert inside.float().mean() > 0.95  # the 1e-5 floor on each bin leaves a sliver elsewhere
    # Uniform mass: midpoints of 20 equal strata of [0, 1].
    assert torch.allclose(samples[1], (torch.arange(20) + 0.5) / 20, atol=1e-5)
    jittered = sample_pdf(bins, weights, 20, jitter=True, generator=torch.Generator().manual_seed(0))
    assert ((jittered[1] >= torch.arange(20) / 20 - 1e-6) & (jittered[1] <= (torch.arange(20) + 1) / 20 + 1e-6)).all()


def test_hierarchical_samples_gather_at_the_surface():
    """Rays towards a sphere of radius 0.6: up-sampling puts most samples around the first crossing,
    where uniform sampling of the chord would put 5% of them."""
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.2, 0.1, -3.0], [0.0, -0.3, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    near, far, hit = sphere_chord(origins, dirs)
    assert hit.all()
    t = hierarchical_samples(sphere_sdf, origins, dirs, near, far, coarse=32, fine=64, rounds=4, jitter=False)
    assert t.shape == (3, 96)
    assert (t[:, 1:] >= t[:, :-1]).all() and (t >= near[:, None] - 1e-6).all() and (t <= far[:, None] + 1e-6).all()
    offset = origins[:, :2].norm(dim=-1)
    surface = 3.0 - (0.6 ** 2 - offset ** 2).sqrt()  # first crossing of each ray
    close = ((t - surface[:, None]).abs() < 0.05).float().mean(1)
    assert (close > 0.4).all(), close


def test_both_samplers_render_the_same_sphere():
    """The initial SDF is a sphere of radius 0.5: with either sampler, rays through it are opaque, rays
    past it empty, and colours agree."""
    cfg = preset("cpu")
    torch.manual_seed(0)
    model = SDFModel(cfg)
    model.sharpness.variance.data.fill_(math.log(300.0) / 10)
    grid = OccupancyGrid(32)
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.3, 0.0, -3.0], [0.0, 0.45, -3.0], [0.7, 0.0, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]] * 4)
    with torch.no_grad():
        outs = {sampler: render_rays(model, grid, origins, dirs, 256 if sampler == "occupancy" else 64,
                                     cos_anneal=1.0, eps=model.sdf.finest_cell(), jitter=False, sampler=sampler)
                for sampler in ("occupancy", "hierarchical")}
    for out in outs.values():
        assert (out["opacity"][:3] > 0.95).all() and out["opacity"][3] < 0.01
    assert (outs["occupancy"]["rgb"] - outs["hierarchical"]["rgb"]).abs().max() < 0.02
    # With gradients (training), the hierarchical sampler evaluates every sample in the region.
    out = render_rays(model, grid, origins, dirs, 16, cos_anneal=1.0, eps=model.sdf.finest_cell(),
                      sampler="hierarchical", fine_samples=16, generator=torch.Generator().manual_seed(0))
    assert out["evaluated"] == 4 * (16 + 16)  # all four rays cross the unit sphere
    out["rgb"].sum().backward()
    assert model.sdf.grid.table.grad is not None
    with pytest.raises(ValueError, match="sampler"):
        render_rays(model, grid, origins, dirs, 16, cos_anneal=1.0, eps=0.01, sampler="stratified")


def test_occupancy_samples_share_one_offset_per_ray(monkeypatch):
    """Jittered samples are the ray's evenly spaced steps shifted by one random offset (NeuS, instant-ngp):
    consecutive samples are exactly one step apart, so each sample's segment is the step it is given,
    and the offsets differ from ray to ray."""
    cfg = preset("cpu")
    torch.manual_seed(0)
    model = SDFModel(cfg)
    seen = {}
    real = model.sdf.with_gradient

    def recording(x, *args, **kwargs):
        seen["x"] = x.detach().clone()
        return real(x, *args, **kwargs)

    monkeypatch.setattr(model.sdf, "with_gradient", recording)
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.2, 0.1, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]] * 2)
    samples = 64
    render_rays(model, OccupancyGrid(16), origins, dirs, samples, cos_anneal=1.0, eps=0.01, jitter=True,
                generator=torch.Generator().manual_seed(3))
    near, far, _ = sphere_chord(origins, dirs)
    z = seen["x"][:, 2].view(2, samples)  # every cell occupied: all samples evaluated, in ray order
    step = (far - near) / samples
    assert torch.allclose(z[:, 1:] - z[:, :-1], step[:, None].expand(2, samples - 1), atol=1e-5)
    offsets = (z[:, 0] - (near - 3.0)) / step
    assert ((offsets >= 0) & (offsets <= 1)).all() and abs(float(offsets[0] - offsets[1])) > 1e-3


def test_the_last_up_sampling_round_evaluates_nothing_it_does_not_use():
    calls = []

    def counting_sdf(points):
        calls.append(points.shape[0])
        return sphere_sdf(points)

    origins = torch.tensor([[0.0, 0.0, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]])
    near, far, _ = sphere_chord(origins, dirs)
    hierarchical_samples(counting_sdf, origins, dirs, near, far, coarse=32, fine=64, rounds=4, jitter=False)
    assert calls == [32, 16, 16, 16]  # the coarse samples and 3 rounds; the 4th round's are the caller's


def test_mixed_precision_choice():
    assert mixed_precision_dtype("auto", "cpu") is None
    assert mixed_precision_dtype("off", "cuda") is None
    assert mixed_precision_dtype("bf16", "cpu") is torch.bfloat16
    assert mixed_precision_dtype("fp16", "cuda:0") is torch.float16
    with pytest.raises(InputError, match="mixed_precision"):
        mixed_precision_dtype("fp8", "cpu")


def test_mixed_precision_keeps_the_sdf_in_float32():
    """bf16 autocast (on the CPU here, as on a GPU): colours stay close to float32 ones and come back
    as float32; the SDF and its numerical gradient are computed in float32 and match exactly."""
    cfg = preset("cpu")
    torch.manual_seed(0)
    model = SDFModel(cfg, background=True)
    x = torch.rand(256, 3) * 1.6 - 0.8
    d = torch.nn.functional.normalize(torch.randn(256, 3), dim=-1)
    eps = model.sdf.finest_cell()

    def run():
        sdf, grad, feat, _ = model.sdf.with_gradient(x, eps)
        rgb = model.color(feat, grad, d)
        behind = model.background(x * 0, d, torch.ones(256), jitter=False)
        return sdf, grad, rgb, behind

    full = run()
    model.set_mixed_precision(torch.bfloat16)
    mixed = run()
    assert all(t.dtype == torch.float32 for t in mixed)
    assert torch.equal(full[0], mixed[0]) and torch.equal(full[1], mixed[1])
    assert (full[2] - mixed[2]).abs().max() < 2e-2 and (full[3] - mixed[3]).abs().max() < 2e-2
    assert not torch.equal(full[2], mixed[2])  # the colour MLP did run in bfloat16
    mixed[2].sum().backward()
    assert model.color.mlp[0].weight.grad.dtype == torch.float32


def test_config_overrides():
    cfg = preset("cpu")
    cfg.set("render.sampler=hierarchical")
    cfg.set("train.curvature_weight=5e-4")
    cfg.set("mesh.largest_component=yes")
    cfg.set("render.fine_samples = 32")
    assert (cfg.render.sampler, cfg.train.curvature_weight, cfg.mesh.largest_component,
            cfg.render.fine_samples) == ("hierarchical", 5e-4, True, 32)
    for bad, message in (("render.sampler=stratified", "render.sampler must be one of"),
                         ("render.nothing=1", "SECTION.FIELD=VALUE"), ("sampler=hierarchical", "SECTION.FIELD"),
                         ("train.iterations=many", "takes a int"), ("train.iterations=0", "between 1 and 100000000, got 0"),
                         ("mesh.largest_component=maybe", "takes a bool")):
        with pytest.raises(InputError, match=message):
            preset("cpu").set(bad)
