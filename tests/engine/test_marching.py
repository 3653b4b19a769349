"""Known answers for ray marching: early termination of the occupancy sampler (samples behind an
opaque surface are not evaluated, the image does not change) and the adaptive ray batch (steps
evaluate about train.target_samples samples; the batch size survives a checkpoint)."""
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.io import protocol
from engine.config import preset
from engine.events import Emitter
from engine.nn.model import SDFModel
from engine.render import OccupancyGrid, marching_keep, neus_alpha, render_rays, sphere_chord
from engine.io.rig import Rig, View
from engine.session import Session
from engine.train.checkpoints import latest_checkpoint
from engine.train.trainer import Trainer
from rig_files import ball_view

CENTER, RADIUS = torch.tensor([0.05, -0.1, 0.0]), 0.5


def texture(x):
    """A colour that changes along every ray, so that a dropped sample that mattered would show."""
    return 0.5 + 0.4 * torch.stack([torch.sin(9 * x[:, 0]), torch.cos(7 * x[:, 1] + 2 * x[:, 2]),
                                    torch.sin(5 * x[:, 2] - 4 * x[:, 0])], -1)


class SphereSDF(torch.nn.Module):
    """model.sdf stand-in: the exact SDF of a sphere; its features are the positions (for the texture)."""

    def forward(self, x):
        return (x - CENTER).norm(dim=-1) - RADIUS, x

    def with_gradient(self, x, eps, mode="numerical", curvature=False, taps=6):
        offset = x - CENTER
        r = offset.norm(dim=-1)
        return r - RADIUS, offset / r.clamp_min(1e-9)[:, None], x, (2.0 / r if curvature else None)


class SphereModel:
    background = None

    def __init__(self, inv_s):
        self.sdf, self.inv_s = SphereSDF(), inv_s

    def sharpness(self):
        return torch.tensor(float(self.inv_s))

    def color(self, features, normals, dirs):
        return texture(features)


def camera_rays(count=48):
    """Rays from z = -3 over the sphere, its silhouette and past it (the last few miss it)."""
    origins = torch.tensor([[0.0, 0.0, -3.0]]).repeat(count, 1)
    target = torch.stack([torch.linspace(-0.75, 0.75, count), torch.linspace(0.6, -0.55, count),
                          torch.zeros(count)], -1)
    return origins, torch.nn.functional.normalize(target - origins, dim=-1)


def band_grid(model, resolution=64):
    grid = OccupancyGrid(resolution)
    grid.update(lambda p: model.sdf(p)[0], model.sharpness())
    return grid


@pytest.mark.parametrize("inv_s", [100.0, 1000.0])
def test_early_termination_drops_only_samples_behind_the_surface(inv_s):
    """marching_keep on an exact sphere SDF against NeuS's exact transmittance (the true cosine):
    every sample with a transmittance in front of it above the threshold is kept (nothing that matters
    is dropped), and a ray keeps at most two samples behind the point where it is opaque (exact
    transmittance below 1e-5); the far side of the band is never evaluated."""
    model = SphereModel(inv_s)
    grid = band_grid(model)
    origins, dirs = camera_rays()
    near, far, hit = sphere_chord(origins, dirs)
    count = 256
    step = torch.where(hit, (far - near) / count, torch.zeros_like(near))[:, None].expand(-1, count)
    t = near[:, None] + (torch.arange(count)[None] + 0.5) * step
    points = origins[:, None] + t[..., None] * dirs[:, None]
    flat = (grid.lookup(points) & hit[:, None]).reshape(-1).nonzero().squeeze(1)
    x = points.reshape(-1, 3)[flat]
    sdf, normal, _, _ = model.sdf.with_gradient(x, 0.0)
    keep = marching_keep(sdf, flat, t, step, model.sharpness(), 1.0, 1e-3)
    # The exact transmittance in front of each candidate.
    alpha = neus_alpha(sdf, (dirs[flat // count] * normal).sum(-1), step.reshape(-1)[flat], inv_s, 1.0)
    full = torch.zeros(t.numel()).index_put((flat,), alpha).view_as(t)
    in_front = torch.cumprod(torch.cat([torch.ones(len(t), 1), 1.0 - full], 1), 1)[:, :-1].reshape(-1)[flat]
    assert keep[in_front >= 1e-3].all()
    behind = torch.zeros(len(t), dtype=torch.long).index_add(0, flat // count, (keep & (in_front < 1e-5)).long())
    assert behind.max() <= 2
    assert keep.sum() < 0.7 * len(flat)  # the far side of the band is never evaluated
    # At a high sharpness a ray that does not graze the sphere (|cos| > 0.5 where it enters) ends
    # within six samples of its first crossing.
    if inv_s >= 1000:
        offset = origins - CENTER
        b = (offset * dirs).sum(-1)
        half_chord = (b * b - (offset * offset).sum(-1) + RADIUS ** 2).clamp_min(0).sqrt()
        crossing, steep = -b - half_chord, half_chord > 0.5 * RADIUS
        kept = flat[keep]
        kept = kept[steep[kept // count]]
        assert steep.sum() > 20 and len(kept)
        assert (t.reshape(-1)[kept] <= crossing[kept // count] + 6 * step.reshape(-1)[kept]).all()
    # Skipping negligible opacity drops more, but only samples whose exact opacity is below the bar.
    skip = marching_keep(sdf, flat, t, step, model.sharpness(), 1.0, 1e-3, skip_alpha=1e-4)
    assert skip.sum() < keep.sum() and not (skip & ~keep).any()
    assert (alpha[keep & ~skip] < 1e-4).all()


@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
def test_early_termination_renders_the_same_sphere_with_fewer_samples(grad):
    model = SphereModel(300.0)
    grid = band_grid(model)
    origins, dirs = camera_rays()
    kwargs = dict(cos_anneal=1.0, eps=1e-3, jitter=False)
    with torch.set_grad_enabled(grad):
        full = render_rays(model, grid, origins, dirs, 256, **kwargs)
        cut = render_rays(model, grid, origins, dirs, 256, early_stop=1e-3, **kwargs)
    assert full["evaluated"] == full["candidates"] == cut["candidates"]
    assert cut["evaluated"] < 0.6 * full["evaluated"]
    assert (full["opacity"] - cut["opacity"]).abs().max() < 2e-3
    assert (full["rgb"] - cut["rgb"]).abs().max() < 2e-3
    # The rays do see the sphere: opaque where they cross it, with the texture of the first crossing.
    offset = origins - CENTER
    b = (offset * dirs).sum(-1)
    disc = b * b - (offset * offset).sum(-1) + RADIUS ** 2
    inside = disc > 0.02
    first = origins + (-b - disc.clamp_min(0).sqrt())[:, None] * dirs
    assert inside.sum() > 20 and (cut["opacity"][inside] > 0.99).all() and (cut["opacity"][disc < -0.02] < 1e-3).all()
    assert (cut["rgb"][inside] - texture(first[inside])).abs().max() < 0.05


@pytest.mark.parametrize("inv_s", [200.0, 2000.0])
def test_early_termination_on_a_learned_field(inv_s):
    """The SDF network with rough detail on its sphere (gradient norms from 0.4 to 4): the cosine
    estimated from the SDF along the ray is not the numerical gradient's, which at a high sharpness
    may even disagree in sign at the sample that crosses the surface; the render still agrees
    (training and inference paths) and its gradients reach the grid."""
    cfg = preset("cpu")
    torch.manual_seed(1)
    model = SDFModel(cfg)
    model.sdf.grid.table.data.normal_(0, 0.05)
    model.sdf.layers[0].weight.data[:, 3:].normal_(0, 0.1)  # the encoding starts silent: let it speak
    model.sharpness.variance.data.fill_(math.log(inv_s) / 10)
    grid = OccupancyGrid(32)
    with torch.no_grad():
        grid.update(lambda p: model.sdf(p)[0], model.sharpness())
    origins, dirs = camera_rays(64)
    kwargs = dict(cos_anneal=1.0, eps=model.sdf.finest_cell(), jitter=False)
    full = render_rays(model, grid, origins, dirs, 128, **kwargs)
    cut = render_rays(model, grid, origins, dirs, 128, early_stop=1e-3, **kwargs)
    assert cut["evaluated"] < 0.75 * full["evaluated"]
    assert (full["opacity"] - cut["opacity"]).abs().max().item() < 3e-3
    assert (full["rgb"] - cut["rgb"]).abs().max().item() < 3e-3
    cut["rgb"].sum().backward()  # the kept samples carry the gradients
    assert model.sdf.grid.table.grad.abs().sum() > 0
    with torch.no_grad():
        fast = render_rays(model, grid, origins, dirs, 128, early_stop=1e-3, **kwargs)
        fast_full = render_rays(model, grid, origins, dirs, 128, **kwargs)
    assert fast["evaluated"] == cut["evaluated"] and fast_full["evaluated"] == full["evaluated"]
    assert (fast["rgb"] - fast_full["rgb"]).abs().max() < 3e-3
    assert (fast["opacity"] - fast_full["opacity"]).abs().max() < 3e-3
    assert full["opacity"].max() > 0.9


# ---------------------------------------------------------------------------------------------
# The adaptive batch on real (small) training runs

def ball_rig(folder, count=12, size=32, radius=0.45):
    """RGBA photographs of a textured ball of `radius` at the origin, ray-cast exactly, from cameras
    around it at distance 3."""
    views = []
    for i in range(count):
        K, c2w, hit, x = ball_view(i, count, size, 1.6, radius)
        rgb = texture(torch.tensor(x * 2, dtype=torch.float32)).numpy()
        rgba = np.concatenate([rgb * hit[:, None], hit[:, None]], 1).reshape(size, size, 4)
        path = str(folder / f"view_{i:02d}.png")
        Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").save(path)
        views.append(View(image_path=path, width=size, height=size, K=K, c2w=c2w))
    return Rig(name="ball", path=str(folder), views=views)


def adaptive_trainer(folder, job, target=2000, rays=128):
    cfg = preset("cpu")
    cfg.train.rays_per_batch, cfg.train.target_samples, cfg.train.checkpoint_every = rays, target, 0
    stream = io.StringIO()
    out = Emitter(stream=stream)
    trainer = Trainer(Session.checked(cfg, ball_rig(folder), str(job), out.warn, region=(0, 0, 0, 1)), out)
    trainer.load()
    return trainer, stream


def test_adaptive_batch_reaches_the_target_samples(tmp_path):
    trainer, stream = adaptive_trainer(tmp_path, tmp_path / "job")
    rays, samples = [], []
    for _ in range(30):
        trainer.train_step()
        rays.append(trainer.last_rays)
        samples.append(trainer.last_samples)
    target = trainer.cfg.train.target_samples
    # It starts from rays_per_batch, whose samples fall well short of the target, and adapts.
    assert rays[0] == 128 and samples[0] < 0.8 * target and min(rays[5:]) > 128
    assert abs(np.mean(samples[-15:]) / target - 1) < 0.2, (rays, samples)
    assert all(abs(s / target - 1) < 0.5 for s in samples[-15:]), samples
    assert all(64 <= r <= 8 * 128 for r in rays)
    # Progress events carry the step's rays and samples (the speed benchmark reads them).
    trainer.train_until(trainer.step + 2)
    progress = [json.loads(line) for line in stream.getvalue().splitlines() if '"progress"' in line]
    assert progress and progress[-1]["event"] == protocol.PROGRESS
    assert progress[-1]["rays"] == trainer.last_rays and progress[-1]["samples"] == trainer.last_samples > 0


def test_fixed_batch_and_the_ray_count_bounds(tmp_path):
    trainer, _ = adaptive_trainer(tmp_path, tmp_path / "job", target=0, rays=200)
    for _ in range(3):
        trainer.train_step()
        assert trainer.last_rays == trainer.batch.rays == 200
    # The bounds: a target far above what max_rays allows, and one far below the minimum; with
    # max_rays 0 the most is 8 x rays_per_batch.
    trainer.cfg.train.target_samples, trainer.cfg.train.max_rays = 10 ** 9, 300
    trainer.train_step()
    assert trainer.batch.rays == 300
    trainer.cfg.train.max_rays = 0
    trainer.train_step()
    assert trainer.last_rays == 300 and trainer.batch.rays == 1600
    trainer.cfg.train.target_samples = 1
    trainer.batch.samples_per_ray = None
    trainer.train_step()
    assert trainer.last_rays == 1600 and trainer.batch.rays == 64


def test_adaptive_batch_survives_checkpoint_and_resume(tmp_path):
    """6 steps in one go against 3, a checkpoint, a fresh trainer resumed from it, and 3 more: the
    same batch sizes step by step and the same weights."""
    def steps(trainer, n):
        out = []
        for _ in range(n):
            out.append(trainer.batch.rays)
            trainer.train_step()
        return out

    whole, _ = adaptive_trainer(tmp_path, tmp_path / "whole")
    expected = steps(whole, 6)
    first, _ = adaptive_trainer(tmp_path, tmp_path / "split")
    got = steps(first, 3)
    first.save_checkpoint()
    resumed, _ = adaptive_trainer(tmp_path, tmp_path / "split")
    resumed.load_checkpoint(latest_checkpoint(str(tmp_path / "split")))
    assert resumed.batch.state() == first.batch.state()
    got += steps(resumed, 3)
    assert got == expected and len(set(expected)) > 2
    for name, value in whole.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[name], atol=1e-5, rtol=1e-4), name


def test_presets_choose_marching_settings():
    """NeuS2's and instant-nsr-pl's 2^18 samples per step on the GPU presets; the cpu preset keeps its
    fixed 512 rays (measured: adapting them did not help on two cores) but terminates rays early."""
    cpu, fast, quality = preset("cpu"), preset("fast"), preset("quality")
    assert fast.train.target_samples == quality.train.target_samples == 2 ** 18
    assert cpu.train.target_samples == 0 and cpu.train.rays_per_batch == 512
    assert all(p.render.early_stop == 1e-3 and p.render.skip_alpha == 0 for p in (cpu, fast, quality))
    cfg = preset("fast")
    cfg.set("render.early_stop=0")
    cfg.set("train.target_samples=0")
    cfg.set("train.max_rays=20000")
    assert (cfg.render.early_stop, cfg.train.target_samples, cfg.train.max_rays) == (0.0, 0, 20000)
