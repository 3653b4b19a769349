"""The per-image appearance embedding (Neuralangelo): it changes the colour and never the geometry,
views that are not training views take the mean, "auto" is on exactly when the job trains without
masks, it round-trips through checkpoints, and it lets training explain photographs whose exposure
differs where the plain colour network cannot."""
import io
import math
import types

import numpy as np
import pytest
import torch
from PIL import Image

from engine import evaluate
from engine.config import InputError, preset
from engine.events import Emitter
from engine.io.rig import Rig, View
from engine.nn.model import SDFModel
from engine.render import OccupancyGrid, render_rays
from engine.session import Session, resolve_appearance
from engine.train.trainer import Trainer
from rig_files import ball_view


def texture(x):
    """A smooth colour on the ball, dark enough that the brightest exposure does not clip."""
    return 0.45 + 0.2 * torch.stack([torch.sin(3 * x[:, 0]), torch.cos(3 * x[:, 1] + x[:, 2]),
                                     torch.sin(2 * x[:, 2] - 2 * x[:, 0])], -1)


def exposure_rig(folder, gains, size=24, radius=0.45, alpha=True, positions=None):
    """Photographs of a textured ball of `radius` at the origin, ray-cast exactly, view i's colours
    times gains[i] (its exposure). Views come in groups taken from one place (`positions` places,
    default: two photographs from each), so that the viewing direction cannot tell the exposures
    apart. RGBA (the alpha a mask) or RGB on black."""
    positions = positions or max(1, len(gains) // 2)
    views = []
    for i, gain in enumerate(gains):
        K, c2w, hit, x = ball_view(i * positions // len(gains), positions, size, 3.0, radius)
        rgb = np.clip(texture(torch.tensor(x * 2, dtype=torch.float32)).numpy() * gain, 0, 1) * hit[:, None]
        pixels = np.concatenate([rgb, hit[:, None]], 1) if alpha else rgb
        path = str(folder / f"view_{i:02d}.png")
        Image.fromarray((pixels.reshape(size, size, -1) * 255).round().astype(np.uint8),
                        "RGBA" if alpha else "RGB").save(path)
        views.append(View(image_path=path, width=size, height=size, K=K, c2w=c2w))
    return Rig(name="ball", path=str(folder), views=views)


def small_config(appearance="on"):
    cfg = preset("cpu")
    cfg.network.appearance = appearance
    cfg.network.init_radius = 0.45  # the ball's: the test is about colour, not about finding the shape
    cfg.train.checkpoint_every = 0
    cfg.train.rays_per_batch, cfg.render.samples_per_ray, cfg.render.occupancy_resolution = 256, 64, 32
    return cfg


def trainer_for(rig, job, cfg):
    out = Emitter(stream=io.StringIO())
    trainer = Trainer(Session.checked(cfg, rig, str(job), out.warn, region=(0, 0, 0, 1)), out)
    trainer.load()
    return trainer


def model_with_codes(views=4, seed=0):
    cfg = preset("cpu")
    torch.manual_seed(seed)
    model = SDFModel(cfg, appearance_views=views)
    with torch.no_grad():
        model.color.appearance.normal_(0.0, 1.0)
    model.sharpness.variance.data.fill_(math.log(300.0) / 10)
    return model


def ball_rays(count=32):
    origins = torch.tensor([[0.0, 0.0, -3.0]]).repeat(count, 1)
    target = torch.stack([torch.linspace(-0.45, 0.45, count), torch.zeros(count), torch.zeros(count)], -1)
    dirs = target - origins
    return origins, dirs / dirs.norm(dim=-1, keepdim=True)


def test_the_embedding_changes_the_colour_and_never_the_geometry():
    model = model_with_codes()
    assert all(p is not model.color.appearance for p in model.sdf.parameters())
    grid = OccupancyGrid(32)
    origins, dirs = ball_rays()
    kwargs = dict(cos_anneal=1.0, eps=model.sdf.finest_cell(), jitter=False)
    with torch.no_grad():
        first = render_rays(model, grid, origins, dirs, 128, views=torch.zeros(len(dirs), dtype=torch.long), **kwargs)
        second = render_rays(model, grid, origins, dirs, 128, views=torch.ones(len(dirs), dtype=torch.long), **kwargs)
    assert first["opacity"].max() > 0.9
    assert torch.equal(first["opacity"], second["opacity"]) and torch.equal(first["grad"], second["grad"])
    assert (first["rgb"] - second["rgb"]).abs().max() > 1e-3
    # Training: the colour loss reaches the embedding's row of each ray, and the SDF is the same function.
    views = torch.arange(len(dirs)) % 2
    out = render_rays(model, grid, origins, dirs, 128, views=views, **kwargs)
    out["rgb"].sum().backward()
    grad = model.color.appearance.grad
    assert grad[:2].abs().sum(1).min() > 0 and grad[2:].abs().sum() == 0
    x = torch.rand(100, 3) - 0.5
    before = model.sdf(x)[0]
    with torch.no_grad():
        model.color.appearance.add_(5.0)
    assert torch.equal(model.sdf(x)[0], before)


def test_views_without_a_training_index_take_the_mean():
    model = model_with_codes()
    mean_model = model_with_codes()
    with torch.no_grad():
        mean_model.color.appearance.copy_(model.color.appearance.mean(0).expand(4, -1))
    grid = OccupancyGrid(32)
    origins, dirs = ball_rays()
    kwargs = dict(cos_anneal=1.0, eps=model.sdf.finest_cell(), jitter=False)
    with torch.no_grad():
        held_out = render_rays(model, grid, origins, dirs, 128, **kwargs)
        mean = render_rays(mean_model, grid, origins, dirs, 128, views=torch.full((len(dirs),), 2), **kwargs)
        own = render_rays(model, grid, origins, dirs, 128, views=torch.full((len(dirs),), 2), **kwargs)
    assert torch.allclose(held_out["rgb"], mean["rgb"], atol=1e-6)
    assert not torch.allclose(held_out["rgb"], own["rgb"], atol=1e-4)
    feat, normals = torch.rand(10, 15), torch.nn.functional.normalize(torch.rand(10, 3), dim=-1)
    assert torch.allclose(model.color(feat, normals, -normals), mean_model.color(feat, normals, -normals, torch.zeros(10, dtype=torch.long)))


def test_evaluation_renders_held_out_views_with_the_mean_and_training_views_with_their_own(tmp_path, monkeypatch):
    rig = exposure_rig(tmp_path, [1.0, 1.0, 1.0], size=8)
    training, held_out = rig.views[:2], rig.views[2:]
    asked = []

    def render_view(trainer, view, chunk=1024, train_index=None):
        asked.append(train_index)
        return np.zeros((view.height, view.width, 3)), np.zeros((view.height, view.width))

    monkeypatch.setattr(evaluate, "render_view", render_view)
    trainer = types.SimpleNamespace(cfg=preset("cpu"), rig=types.SimpleNamespace(views=training),
                                    model=types.SimpleNamespace(appearance_views=2), out=Emitter(stream=io.StringIO()))
    evaluate.evaluate_views(trainer, held_out + training, 1, str(tmp_path / "eval"))
    assert asked == [None, 0, 1]


def test_auto_is_on_without_masks_and_off_with_them(tmp_path):
    (tmp_path / "masked").mkdir()
    (tmp_path / "plain").mkdir()
    masked = exposure_rig(tmp_path / "masked", [1.0] * 4, size=16)
    plain = exposure_rig(tmp_path / "plain", [1.0] * 4, size=16, alpha=False)
    cfg = preset("cpu")
    assert cfg.network.appearance == "auto" and cfg.network.appearance_dim == 8
    assert resolve_appearance(cfg, masked.views, dynamic=False) is False
    assert resolve_appearance(cfg, plain.views, dynamic=False) is True
    cfg.set("data.use_masks=false")
    assert resolve_appearance(cfg, masked.views, dynamic=False) is True
    for choice, expected in (("on", True), ("off", False)):
        cfg = preset("cpu")
        cfg.set(f"network.appearance={choice}")
        assert resolve_appearance(cfg, masked.views, False) is expected
        assert resolve_appearance(cfg, plain.views, False) is expected
    assert resolve_appearance(cfg, plain.views, dynamic=True) is False  # dynamic jobs: off whatever is asked
    # A separate mask file is a mask too.
    with_file = [View(image_path=v.image_path, width=16, height=16, K=v.K, c2w=v.c2w, mask_path=v.image_path)
                 for v in plain.views]
    assert resolve_appearance(preset("cpu"), with_file, dynamic=False) is False
    # Session resolves it once, and the `started` event says so.
    for rig, expected in ((masked, False), (plain, True)):
        session = Session.open(preset("cpu"), rig, str(tmp_path / "job"), region=(0, 0, 0, 1))
        assert session.appearance is expected and session.started_fields()["appearance"] is expected
    for bad, message in (("network.appearance=maybe", "auto, on, off"), ("network.appearance_dim=0", "between 1 and 64"),
                         ("network.appearance_dim=65", "between 1 and 64")):
        with pytest.raises(InputError, match=message):
            preset("cpu").set(bad)
    assert preset("fast").to_dict()["network"]["appearance"] == "auto"


def training_psnr(trainer, rays=4096):
    """PSNR of a fixed batch of the training views' rays, each rendered with its view's appearance."""
    origins, dirs, rgb, _, views = trainer.data.sample(rays, torch.Generator().manual_seed(7), with_views=True)
    with torch.no_grad():
        out = trainer.render(origins, dirs, cos_anneal=1.0, eps=trainer.model.sdf.finest_cell(), views=views)
    return -10 * math.log10(float(((out["rgb"] - rgb) ** 2).mean()))


def test_the_embedding_explains_exposures_the_colour_network_cannot(tmp_path):
    """Two photographs from each of four places, one at 0.6 and one at 1.4 times the light: without the
    embedding the colour network can only learn their mean (the viewing direction does not tell them
    apart); with it, each photograph's own exposure."""
    gains = [0.6, 1.4] * 4
    psnr = {}
    for appearance in ("off", "on"):
        trainer = trainer_for(exposure_rig(tmp_path, gains), tmp_path / appearance, small_config(appearance))
        assert trainer.model.appearance_views == (8 if appearance == "on" else 0)
        for _ in range(100):
            trainer.train_step()
        psnr[appearance] = training_psnr(trainer)
    assert psnr["on"] > psnr["off"] + 3.0, psnr


def test_checkpoints_round_trip_the_embedding(tmp_path):
    rig = exposure_rig(tmp_path, [0.8, 1.2, 1.0, 1.1])
    trainer = trainer_for(rig, tmp_path / "job", small_config("on"))
    trainer.train_step()
    with torch.no_grad():
        trainer.model.color.appearance.normal_()
    table = trainer.model.color.appearance.detach().clone()
    path = trainer.save_checkpoint()
    state = torch.load(path, weights_only=True)
    assert torch.equal(state["model"]["color.appearance"], table)
    restored = trainer_for(rig, tmp_path / "job", small_config("on"))
    assert restored.resume_checkpoint() == path
    assert torch.equal(restored.model.color.appearance, table) and restored.step == 1
    restored.train_step()  # the optimiser's state matches the parameters
    # A checkpoint without an embedding (a job from before it, or one trained with it off) loads as it
    # was trained, whatever the configuration resolves to now, and goes on training.
    plain = trainer_for(rig, tmp_path / "plain", small_config("off"))
    plain.train_step()
    old = plain.save_checkpoint()
    again = trainer_for(rig, tmp_path / "plain", small_config("on"))
    assert again.model.appearance_views == 4
    again.load_checkpoint(old)
    assert again.model.appearance_views == 0 and again.model.color.appearance is None
    again.train_step()
    # ... and the other way round: an embedding the configuration would not have made.
    other = trainer_for(rig, tmp_path / "job", small_config("off"))
    other.load_checkpoint(path)
    assert torch.equal(other.model.color.appearance, table)
