"""Known answers for dynamic scenes: the composition of rigid transforms, the world placement of
canonical meshes, and global transformation prediction recovering a known motion."""
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import InputError, parse_frames, preset
from engine.data import camera_rays
from engine.session import Session, select_frames
from engine.train.dynamic import SequenceTrainer
from engine.events import Emitter
from engine.train.motion import (axis_angle_to_matrix, canonical_from_frame, compose, from_canonical,
                           matrix_to_axis_angle, rotation_error_deg, to_canonical, world_from_canonical)
from engine.nn.model import SDFModel
from engine.render import OccupancyGrid, render_rays
from engine.io.rig import Rig, View
from rig_files import look_at


def random_rotation(rng, max_angle=math.pi):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(0.0, max_angle)
    return axis_angle_to_matrix(torch.tensor(axis * angle, dtype=torch.float64)).numpy()


def test_composition_equals_the_product_of_the_frame_to_frame_matrices():
    """x_{i-1} = R_i (x_i + T_i) chained: the composed (R^c_i, T^c_i) is the product M_1 M_2 ... M_i."""
    rng = np.random.default_rng(3)
    rotation, translation, product = np.eye(3), np.zeros(3), np.eye(4)
    for _ in range(12):
        relative = random_rotation(rng), rng.normal(size=3) * 0.3
        rotation, translation = compose(rotation, translation, *relative)
        product = product @ canonical_from_frame(*relative)
        assert np.allclose(canonical_from_frame(rotation, translation), product, atol=1e-9)
        points = rng.normal(size=(20, 3))
        homogeneous = np.concatenate([points, np.ones((20, 1))], 1) @ product.T
        assert np.allclose(to_canonical(points, rotation, translation), homogeneous[:, :3], atol=1e-9)
        assert np.allclose(from_canonical(to_canonical(points, rotation, translation), rotation, translation),
                           points, atol=1e-9)
    # The same on torch tensors (what the trainer composes during prediction).
    relative = random_rotation(rng), rng.normal(size=3)
    composed = compose(*(torch.tensor(m) for m in (rotation, translation) + relative))
    expected = compose(rotation, translation, *relative)
    assert all(np.allclose(a.numpy(), b) for a, b in zip(composed, expected))


def test_world_from_canonical_moves_the_canonical_surface_to_the_frame():
    rng = np.random.default_rng(4)
    center, radius = np.array([0.3, -1.2, 2.0]), 1.7
    rotation, translation = random_rotation(rng), rng.normal(size=3) * 0.2
    canonical = rng.normal(size=(50, 3)) * 0.5                     # normalised, canonical frame
    frame = from_canonical(canonical, rotation, translation)      # normalised, this frame
    m = world_from_canonical(rotation, translation, center, radius)
    world_canonical, world_frame = canonical * radius + center, frame * radius + center
    assert np.allclose(world_canonical @ m[:3, :3].T + m[:3, 3], world_frame, atol=1e-9)
    assert np.allclose(m[3], [0, 0, 0, 1]) and np.isclose(np.linalg.det(m[:3, :3]), 1.0)


def test_axis_angle_round_trip_and_rotation_error():
    rng = np.random.default_rng(5)
    for _ in range(20):
        w = rng.normal(size=3)
        w *= rng.uniform(0.0, 3.0) / np.linalg.norm(w)
        r = axis_angle_to_matrix(torch.tensor(w)).numpy()
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-9)
        assert np.allclose(matrix_to_axis_angle(r), w, atol=1e-6)
        assert math.isclose(rotation_error_deg(np.eye(3), r), math.degrees(np.linalg.norm(w)), abs_tol=1e-4)
    assert np.allclose(matrix_to_axis_angle(np.eye(3)), 0.0)


def test_dynamic_settings_are_checked():
    cfg = preset("cpu")
    cfg.set("dynamic.frames=2:5")
    cfg.set("dynamic.coordinates=canonical")
    cfg.set("dynamic.predict_transform=off")
    assert (cfg.dynamic.frames, cfg.dynamic.coordinates, cfg.dynamic.predict_transform) == ("2:5", "canonical", False)
    for bad, message in [("dynamic.frames=5:2", "before the first"), ("dynamic.coordinates=local", "world, canonical"),
                         ("dynamic.frame_lr_factor=0", "positive"), ("dynamic.prediction_iterations=-1", "at least 0"),
                         ("dynamic.frame_iterations=0", "at least 1")]:
        with pytest.raises(InputError, match=message):
            preset("cpu").set(bad)
    assert preset("fast").dynamic.frame_iterations == 2000 and preset("cpu").dynamic.prediction_iterations == 200


def test_frame_ranges():
    assert parse_frames("3:7") == (3, 7) and parse_frames("3:") == (3, None)
    assert parse_frames(":7") == (None, 7) and parse_frames("5") == (5, 5)
    for bad in ("a:b", "7:3", "1:2:3", ""):
        with pytest.raises(InputError):
            parse_frames(bad)
    views = [View(image_path=f"{f}.png", width=4, height=4, K=np.eye(3), c2w=np.eye(4), frame=f) for f in (2, 3, 5, 8)]
    rig = Rig(name="r", path="r.json", views=views)
    assert select_frames(rig, "3:6") == [3, 5] and select_frames(rig, "") == [2, 3, 5, 8]
    with pytest.raises(InputError, match="no frame in that range"):
        select_frames(rig, "9:")


# ---------------------------------------------------------------------------------------------
# Global transformation prediction against a known motion

def shape_sdf(x):
    """An asymmetric solid (a capsule with a knob), so that every rotation is visible."""
    a, b = torch.tensor([-0.3, 0.0, 0.0]), torch.tensor([0.3, 0.0, 0.0])
    h = ((x - a) @ (b - a) / ((b - a) @ (b - a))).clamp(0, 1)
    capsule = (x - a - h[:, None] * (b - a)).norm(dim=-1) - 0.22
    knob = (x - torch.tensor([0.15, 0.18, 0.12])).norm(dim=-1) - 0.14
    return torch.minimum(capsule, knob)


def texture(x):
    return 0.5 + 0.4 * torch.stack([torch.sin(9 * x[:, 0]), torch.cos(7 * x[:, 1] + 2 * x[:, 2]),
                                    torch.sin(5 * x[:, 2] - 4 * x[:, 0])], -1)


def fitted_model(trainer, steps=400):
    """The trainer's model regressed onto the analytic shape and texture (a stand-in for a trained frame).
    The learning rate decays to a tenth, so that the fit converges: at a constant rate the field ends
    wherever Adam's last noisy steps leave it, and how good it is then hangs on the processor's
    floating-point path (on one AMD EPYC the SDF's mean error was 0.011 with torch's AVX-512 kernels,
    0.007 with its AVX2 ones; with the decay 0.002 with either)."""
    model = trainer.model
    model.sdf.grid.set_active_levels(trainer.cfg.encoding.levels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * 0.1 ** (step / steps)
        x = (torch.rand(4096, 3, generator=generator) * 2 - 1) * 0.8
        sdf, feat = model.sdf(x)
        truth = shape_sdf(x)
        near = truth.abs() < 0.1
        surface = x[near].requires_grad_(True)
        normal = torch.nn.functional.normalize(torch.autograd.grad(shape_sdf(surface).sum(), surface)[0], dim=-1)
        rgb = model.color(feat[near], normal, -normal)
        loss = (sdf - truth).abs().mean() + (rgb - texture(x[near])).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.sharpness.variance.data.fill_(math.log(400.0) / 10)
    # The placeholder images gave an empty visual hull: the occupancy region is the unit sphere.
    trainer.grid = OccupancyGrid(trainer.cfg.render.occupancy_resolution)
    trainer.grid.update(trainer.sdf_fn, model.sharpness())


def render_views(trainer, views, rotation, translation):
    """RGBA images of the model seen by `views` (world = normalised space), the object moved so that
    a point x of this frame is the model's point R (x + T)."""
    images = []
    rotation, translation = (torch.tensor(m, dtype=torch.float32) for m in (rotation, translation))
    for view in views:
        pixels = np.stack(np.meshgrid(np.arange(view.width), np.arange(view.height)), -1).reshape(-1, 2)
        dirs = torch.tensor(camera_rays(view, pixels), dtype=torch.float32)
        origins = torch.tensor(view.c2w[:3, 3], dtype=torch.float32).expand_as(dirs)
        with torch.no_grad():
            out = render_rays(trainer.model, trainer.grid, to_canonical(origins, rotation, translation),
                              dirs @ rotation.T, 256, cos_anneal=1.0, eps=trainer.model.sdf.finest_cell(),
                              jitter=False)
        rgba = torch.cat([out["rgb"], out["opacity"][:, None]], -1).reshape(view.height, view.width, 4)
        images.append((rgba.clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    return images


def two_frame_rig(folder, count=16, size=40):
    views = []
    for frame in (0, 1):
        for i in range(count):
            elevation = 0.5 * math.sin(i * 2.4)
            azimuth = i * 2 * math.pi / count
            eye = 3.0 * np.array([math.cos(azimuth) * math.cos(elevation), math.sin(azimuth) * math.cos(elevation),
                                  math.sin(elevation)])
            K = np.array([[size * 2.2, 0, size / 2], [0, size * 2.2, size / 2], [0, 0, 1]])
            path = str(folder / f"f{frame}_c{i:02d}.png")
            Image.new("RGBA", (size, size), (128, 128, 128, 255)).save(path)  # placeholders; frame 1 is rendered
            views.append(View(image_path=path, width=size, height=size, K=K, c2w=look_at(eye, (0, 0, 0)),
                              camera_id=f"c{i}", frame=frame))
    return Rig(name="moving", path=str(folder), views=views)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """A model fitted to a known object (frame 0), frame 1's images rendered with the object moved by
    a known rigid motion, and the trainer's prediction of that motion from frame 1's images."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("moving")
    rig = two_frame_rig(folder)
    moved = rig.views[len(rig.views) // 2:]  # frame 1 (the trainer keeps the views of the frame in hand)
    out = Emitter(stream=io.StringIO())
    trainer = SequenceTrainer(Session.checked(preset("cpu"), rig, str(folder / "job"), out.warn, region=(0, 0, 0, 1)), out)
    trainer.load()
    fitted_model(trainer)
    axis = np.array([0.3, 1.0, 0.2]) / np.linalg.norm([0.3, 1.0, 0.2])
    truth = (axis_angle_to_matrix(torch.tensor(axis * math.radians(8.0))).numpy(), np.array([0.04, -0.03, 0.025]))
    for view, image in zip(moved, render_views(trainer, moved, *truth)):
        Image.fromarray(image, "RGBA").save(view.image_path)
    trainer.step = trainer.frame_begin(1)
    trainer.load_frame(1)
    trainer.predict_motion()
    return trainer, truth


def test_prediction_recovers_a_known_rigid_motion(predicted):
    trainer, (rotation, translation) = predicted
    predicted_rotation, predicted_translation = trainer.relative
    assert rotation_error_deg(predicted_rotation, rotation) < 1.0
    # Where the object's points land (the capsule's ends and knob), against the object's size (~1.0).
    points = np.array([[-0.52, 0, 0], [0.52, 0, 0], [0.15, 0.32, 0.12], [0, -0.22, 0]])
    error = np.linalg.norm(to_canonical(points, predicted_rotation, predicted_translation)
                           - to_canonical(points, rotation, translation), axis=1).max()
    assert error < 0.01, error
    # It is the frame's canonical transform too (the previous frame is the canonical one here).
    assert np.allclose(trainer.rotation, predicted_rotation, atol=1e-6)


def test_prediction_is_seeded_by_the_frame_alone(predicted):
    """The prediction draws its rays and jitter from generators of its own, seeded by train.seed and
    the frame: neither the global random state, the trainer's generator nor the thread count changes
    the motion it predicts (a short run, capped by dynamic.prediction_iterations)."""
    trainer, _ = predicted
    saved = (trainer.relative, trainer.rotation, trainer.translation, trainer.generator.get_state(),
             trainer.cfg.dynamic.prediction_iterations, torch.get_num_threads(), trainer.motion.detach().clone())
    motions = []
    try:
        trainer.cfg.dynamic.prediction_iterations = 15
        for threads, seed in [(1, 1), (2, 2)]:
            torch.set_num_threads(threads)
            torch.manual_seed(seed)
            trainer.generator.manual_seed(seed)
            trainer.relative = (np.eye(3), np.zeros(3))
            trainer.predict_motion()
            motions.append(trainer.relative)
        assert not np.allclose(motions[0][0], np.eye(3), atol=1e-3)  # it moved
    finally:
        trainer.relative, trainer.rotation, trainer.translation = saved[:3]
        trainer.generator.set_state(saved[3])
        trainer.cfg.dynamic.prediction_iterations = saved[4]
        torch.set_num_threads(saved[5])
        with torch.no_grad():
            trainer.motion.copy_(saved[6])
    assert np.allclose(motions[0][0], motions[1][0], atol=1e-5) and np.allclose(motions[0][1], motions[1][1], atol=1e-5)


def test_prediction_lowers_the_loss_of_no_motion(predicted):
    """Without the prediction the frame would be 8 degrees off: the predicted motion's loss is well
    below that of no motion."""
    trainer, _ = predicted
    batch = trainer.data.sample(4096, torch.Generator().manual_seed(1))
    with torch.no_grad():
        losses = [float(trainer.prediction_loss(*trainer.transform_tensors(w, t), batch))
                  for w, t in [(np.zeros(3), np.zeros(3)),
                               (matrix_to_axis_angle(trainer.relative[0]), trainer.relative[1])]]
    assert losses[1] < 0.7 * losses[0], losses


def test_frame_meshes_in_world_and_canonical_coordinates(predicted):
    """The frame's world mesh is its canonical mesh moved by world_from_canonical; the canonical one
    lies on the known object where frame 0 had it; sequence.json says which it holds."""
    import json
    import os
    trainer, _ = predicted
    world, canonical = trainer.mesh(48, "world"), trainer.mesh(48, "canonical")
    m = trainer.world_from_canonical()
    assert len(world[1]) > 100 and np.array_equal(world[1], canonical[1])
    assert np.allclose(canonical[0] @ m[:3, :3].T + m[:3, 3], world[0], atol=1e-5)
    on_surface = shape_sdf(torch.tensor(canonical[0], dtype=torch.float32)).abs()  # world = normalised here
    assert float(on_surface.mean()) < 0.02
    trainer.cfg.dynamic.coordinates = "canonical"
    try:
        trainer.finish_frame(0.5)
    finally:
        trainer.cfg.dynamic.coordinates = "world"
    with open(os.path.join(trainer.job_dir, "meshes", "sequence.json")) as f:
        sequence = json.load(f)
    assert sequence["coordinates"] == "canonical" and [e["frame"] for e in sequence["frames"]] == [1]
    assert np.allclose(sequence["frames"][0]["world_from_canonical"], m, atol=1e-8)
    assert os.path.isfile(os.path.join(trainer.job_dir, "meshes", sequence["frames"][0]["mesh"]))


def test_prediction_gradients_stay_finite_for_rays_that_miss_the_region(predicted):
    """Rays that pass beside the unit sphere (the photographs' edges) give no gradient, not NaN."""
    trainer, _ = predicted
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.0, 1.0, -3.0], [0.0, 5.0, -3.0], [0.3, 0.0, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]] * 4)
    batch = (origins, dirs, torch.full((4, 3), 0.5), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    axis_angle = torch.zeros(3, requires_grad=True)
    translation = torch.zeros(3, requires_grad=True)
    trainer.prediction_loss(axis_angle, translation, batch).backward()
    assert torch.isfinite(axis_angle.grad).all() and torch.isfinite(translation.grad).all()
    assert axis_angle.grad.abs().sum() + translation.grad.abs().sum() > 0


def test_analytic_gradients_reach_the_motion(predicted):
    """With train.gradient=analytic the positions keep their graph through the double backward, so the
    prediction loss's gradient in the motion is its derivative, normals included: it points where the
    numerical mode's does (whose gradient a central finite difference confirms), and a finite difference
    along it agrees within what the analytic normals' jumps at the grid's cell faces allow (the reason
    Neuralangelo prefers numerical gradients)."""
    trainer, _ = predicted
    batch = trainer.data.sample(512, torch.Generator().manual_seed(2))
    saved = trainer.cfg.train.gradient, trainer.cfg.render.early_stop
    trainer.cfg.render.early_stop = 0.0  # no samples dropped by a threshold: a smooth loss
    found = {}
    try:
        for mode in ("numerical", "analytic"):
            trainer.cfg.train.gradient = mode

            def loss(motion):
                axis_angle, translation = motion.split(3)
                return trainer.prediction_loss(axis_angle, translation, batch, torch.Generator().manual_seed(7))

            motion = torch.zeros(6, requires_grad=True)
            loss(motion).backward()
            gradient = motion.grad.clone()
            direction = gradient / gradient.norm()
            h = 1e-3
            with torch.no_grad():
                slope = (float(loss(h * direction)) - float(loss(-h * direction))) / (2 * h)
            found[mode] = gradient, slope
            trainer.model.zero_grad(set_to_none=True)
    finally:
        trainer.cfg.train.gradient, trainer.cfg.render.early_stop = saved
    numerical, analytic = found["numerical"][0], found["analytic"][0]
    assert abs(found["numerical"][1] - float(numerical.norm())) < 0.1 * float(numerical.norm())
    assert float(torch.nn.functional.cosine_similarity(analytic, numerical, dim=0)) > 0.9
    assert abs(found["analytic"][1] - float(analytic.norm())) < 0.35 * float(analytic.norm())


def test_the_background_stays_in_the_world_when_the_object_moves():
    """Unmasked scenes: a frame's rays are moved into the object's frame for the SDF, but the background
    NeRF sees them as they are in the world, so a still background looks the same whatever the motion."""
    torch.manual_seed(0)
    model = SDFModel(preset("cpu"), background=True)
    grid = OccupancyGrid(16)
    origins = torch.tensor([[0.0, 1.5, -3.0], [1.6, 0.4, -3.0], [-0.2, -2.0, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]] * 3)  # all miss the unit sphere in both frames
    rotation = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 0.6]))
    translation = torch.tensor([0.1, -0.05, 0.0])  # across the rays: the same distances along them
    moved = to_canonical(origins, rotation, translation), dirs @ rotation.T
    with torch.no_grad():
        still = render_rays(model, grid, origins, dirs, 32, cos_anneal=1.0, eps=0.01, jitter=False)["rgb"]
        world = render_rays(model, grid, *moved, 32, cos_anneal=1.0, eps=0.01, jitter=False,
                            world_rays=(origins, dirs))["rgb"]
        dragged = render_rays(model, grid, *moved, 32, cos_anneal=1.0, eps=0.01, jitter=False)["rgb"]
    assert torch.allclose(world, still, atol=1e-6)
    assert not torch.allclose(dragged, still, atol=1e-3)  # what the background would do, moved with the object


def test_a_later_frame_restarts_its_schedules_and_trains_its_motion(predicted):
    """NeuS2's per-frame training: after the prediction a later frame starts a fresh optimiser and the
    coarse-to-fine schedules from their start (every level open within FRAME_SCHEDULE_SHARE of its steps),
    and its motion trains with the network instead of staying frozen."""
    from engine.train.dynamic import FRAME_SCHEDULE_SHARE
    from engine.train.schedules import active_levels
    trainer, (rotation, _) = predicted
    cfg = trainer.cfg
    saved = ({k: v.clone() for k, v in trainer.model.state_dict().items()}, trainer.motion.detach().clone(),
             trainer.step, trainer.rotation, trainer.translation, trainer.relative)
    try:
        trainer.step = trainer.frame_begin(1)
        trainer.make_optimizer()
        assert trainer.optimizer.state == {}
        groups = {g["name"]: g for g in trainer.optimizer.param_groups}
        assert groups["motion"]["params"][0] is trainer.motion and groups["motion"]["lr"] > 0
        assert trainer.schedule_step() == 0
        before = trainer.motion.detach().clone()
        for _ in range(3):
            trainer.train_step()
        assert trainer.model.sdf.grid.active_levels == cfg.train.start_levels
        assert torch.equal(trainer.motion.detach(), before)  # coarse levels: the motion waits
        trainer.step = trainer.frame_begin(1) + int(cfg.dynamic.frame_iterations * FRAME_SCHEDULE_SHARE)
        assert active_levels(trainer.schedule_step(), cfg, cfg.encoding.levels) == cfg.encoding.levels
        for _ in range(3):
            trainer.train_step()
        assert not torch.equal(trainer.motion.detach(), before)  # every level open: it trains with the network
        trainer.settle_transform()
        assert rotation_error_deg(trainer.relative[0], rotation) < 1.0
    finally:
        trainer.model.load_state_dict(saved[0])
        with torch.no_grad():
            trainer.motion.copy_(saved[1])
        trainer.step, trainer.rotation, trainer.translation, trainer.relative = saved[2:]
