"""Static-scene training: NeuS volume rendering of a hash-grid SDF, with progressive levels,
numerical gradients, eikonal/curvature/mask losses, checkpoints, cancel and resume."""
import math
import os
import time

import numpy as np
import torch

from ..data import RayDataset, carve
from ..extract import extract_mesh, largest_component
from ..config import InputError
from ..inputs import check_region
from ..io import protocol
from ..io.ply import write_ply
from ..nn.model import SDFModel
from ..nn.precision import mixed_precision_dtype
from ..render import OccupancyGrid, render_rays
from .checkpoints import load_checkpoint, load_newest_intact, save_checkpoint
from .losses import training_losses
from .schedules import AdaptiveBatch, active_levels, learning_rate_factor, numerical_step


class Cancelled(Exception):
    pass


def region_grid(dataset, resolution, to_views=None):
    """Occupancy region: the unit sphere, cut to the visual hull (dilated 2 cells) when masks exist.
    `to_views` maps the grid's normalised points to the views' normalised space (a dynamic frame's
    motion); None: the same space."""
    if not dataset.has_masks:
        return None
    axis = (np.arange(resolution) + 0.5) / resolution * 2 - 1
    centers = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    if to_views is not None:
        centers = to_views(centers)
    inside = carve(dataset.views, dataset.masks_np, dataset.normalization.to_world(centers))
    hull = torch.from_numpy(inside.reshape(1, 1, resolution, resolution, resolution)).float()
    dilated = torch.nn.functional.max_pool3d(hull, kernel_size=5, stride=1, padding=2)
    return dilated.reshape(-1) > 0


class Trainer:
    """The static job's training system: builds the dataset, model, occupancy grid and optimiser from
    a Session (engine.session), runs the steps, checkpoints, previews and extracts the mesh."""

    def __init__(self, session, emitter, cancel=None):
        self.session, self.out, self.cancel = session, emitter, cancel
        self.cfg, self.rig, self.job_dir, self.device = session.cfg, session.rig, session.job_dir, session.device
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.batch = AdaptiveBatch(cfg.train)  # the ray batch: fixed, or adapted to train.target_samples
        self.last_rays = self.last_samples = 0
        # Where checkpoints (and the event log they redraw curves.png from) live: the job folder, or a
        # spread job's rank folder (engine.train.ranks).
        self.checkpoint_home = self.job_dir
        for sub in (protocol.CHECKPOINTS_DIR, protocol.MESHES_DIR, protocol.PREVIEWS_DIR):
            os.makedirs(os.path.join(self.job_dir, sub), exist_ok=True)

    # -- set-up ------------------------------------------------------------------------------
    def load(self):
        self.out.emit(protocol.STAGE, name="load")
        normalization = self.session.normalization()
        self.rig.views, self.held_out = self.training_views()
        self.data = RayDataset(self.rig, background=self.cfg.render.background, normalization=normalization,
                               downscale=self.cfg.data.downscale, use_masks=self.cfg.data.use_masks)
        for message in self.rig.warnings + self.data.warnings:
            self.out.warn(message)
        n = self.data.normalization
        check_region(self.rig.views, n.center, n.radius, f"{self.rig.path}")
        hull = region_grid(self.data, self.cfg.render.occupancy_resolution)
        if hull is not None and not bool(hull.any()):
            raise InputError(f"{self.rig.path}: the region (centre {np.round(n.center, 6).tolist()}, radius "
                             f"{n.radius:.6g}) holds none of the object the masks show (no point of it lies "
                             f"inside every silhouette): move the region onto the object, or train without "
                             f"masks (--no-masks)")
        self.data.normalization.save(os.path.join(self.job_dir, protocol.NORMALIZATION_FILE))
        masks = "yes" if self.data.has_masks else "no" if self.cfg.data.use_masks else "no (data.use_masks is off)"
        self.out.log(f"{len(self.rig.views)} views, {self.data.pixel_count} pixels, masks: {masks}; "
                     f"region: centre {np.round(n.center, 4).tolist()}, radius {n.radius:.4g}")
        use_background = self.cfg.render.background_model == "auto" and not self.data.has_masks
        # The appearance embedding: a row per training view (Session.appearance resolved it; dynamic: off).
        rows = len(self.rig.views) if self.session.appearance else 0
        if self.session.dynamic and self.cfg.network.appearance == "on":
            self.out.warn("network.appearance=on: dynamic jobs train without the appearance embedding")
        elif rows:
            self.out.log(f"appearance embedding: {self.cfg.network.appearance_dim} numbers for each of the {rows} "
                         f"training views (held-out views and mesh colours use their mean)")
        self.model = SDFModel(self.cfg, background=use_background, appearance_views=rows).to(self.device)
        self.backend, half_table = self.session.backend, self.session.half_table
        self.model.sdf.grid.set_backend(self.backend, half_table=half_table)
        self.out.log(f"hash encoding: {self.backend} backend" + (", float16 table lookups" if half_table else ""))
        self.amp_dtype = mixed_precision_dtype(self.cfg.train.mixed_precision, self.device)
        self.model.set_mixed_precision(self.amp_dtype)
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none.
        self.scaler = torch.amp.GradScaler(self.device, enabled=self.amp_dtype == torch.float16)
        if self.amp_dtype is not None:
            self.out.log(f"mixed precision: colour and background MLPs in {str(self.amp_dtype).split('.')[-1]}")
        self.grid = OccupancyGrid(self.cfg.render.occupancy_resolution, hull, self.device)
        if self.cfg.train.curvature_weight > 0 and not self.curvature_applies():
            self.out.warn(f"train.curvature_weight={self.cfg.train.curvature_weight:g} does not apply with "
                          f"train.gradient=analytic: the hash grid's trilinear interpolation has no second "
                          f"derivative along an axis, so the curvature loss is off (numerical gradients give it)")
        self.make_optimizer()
        self.step = 0

    def make_optimizer(self):
        # AdamW: weight decay (the grid's, when the preset asks for it) stays out of Adam's moments.
        self.optimizer = torch.optim.AdamW(self.model.param_groups(self.cfg.train) + self.extra_param_groups(),
                                           betas=(0.9, 0.99), eps=1e-15, weight_decay=0.0)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]

    def group_scale(self, group, levels):
        """A further factor on one optimiser group's learning rate at this step (`levels` open)."""
        return 1.0

    def extra_param_groups(self):
        """Optimiser groups beyond the model's (the dynamic trainer's frame motion)."""
        return []

    def training_views(self):
        """(training views, held-out views): Session.views of the job."""
        return self.session.views(self.out)

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self):
        path = save_checkpoint(self.checkpoint_home, self.step, self.checkpoint_state())
        self.write_curves()
        return path

    def checkpoint_state(self):
        """Everything a checkpoint holds: the training state, the config and checkpoint_extra()."""
        return {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "grid": self.grid.state_dict(), "scaler": self.scaler.state_dict(),
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "config": self.cfg.to_dict(), "backend": self.backend, "batch": self.batch.state(),
                **self.checkpoint_extra()}

    def resume_checkpoint(self):
        """Restore the newest intact checkpoint (a damaged newer one is skipped with a warning); its
        path, or None when the job has none."""
        path, state = load_newest_intact(self.checkpoint_home, self.device, self.backend, self.out.warn)
        if path is not None:
            self.load_checkpoint(path, state)
        return path

    def checkpoint_extra(self):
        """More state for the checkpoint (the dynamic trainer's sequence position)."""
        return {}

    def write_curves(self):
        """Redraw JOB/curves.png from the job's events so far. Called with every checkpoint, which is
        also what happens on cancel and when training ends; a picture that fails never stops training."""
        events = os.path.join(self.checkpoint_home, protocol.EVENTS_FILE)
        if not os.path.isfile(events):  # a Trainer driven without an event log (tests, scripts)
            return
        path = os.path.join(self.checkpoint_home, protocol.CURVES_FILE)
        try:
            from ..curves import write_curves
            write_curves(protocol.read_events(events), path)
        except (ImportError, OSError, ValueError) as exc:
            self.out.log(f"warning: could not draw {path}: {exc}")

    def load_checkpoint(self, path, state=None):
        """Restore the training state from `path` (or its already loaded `state`); returns the
        checkpoint's dict (for checkpoint_extra's fields)."""
        if state is None:
            state = load_checkpoint(path, self.device, self.backend)
        if self.model.match_appearance(state["model"]):  # the checkpoint's embedding (or none) is what was trained
            rows = self.model.appearance_views
            self.out.log(f"{path}: appearance embedding " + (f"of {rows} views" if rows else "off") + " as trained")
            self.make_optimizer()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.grid.load_state_dict(state["grid"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step = state["step"]
        self.batch.restore(state.get("batch"))
        return state

    # -- training -------------------------------------------------------------------------------
    def sdf_fn(self, x):
        """SDF at points given on any device, returned on the CPU (for extraction)."""
        return self.model.sdf.value(x.to(self.device)).to(x.device)

    def render(self, origins, dirs, cos_anneal, eps, gradient="numerical", curvature=False, jitter=False,
               views=None, world_rays=None):
        """render_rays with the configured sampler and gradient taps (normalised-space rays on the training
        device); `views`: each ray's training view (the appearance embedding's row), None: the mean
        appearance; `world_rays`: the rays before a frame's motion moved them (the background's)."""
        rc = self.cfg.render
        return render_rays(self.model, self.grid, origins, dirs, rc.samples_per_ray, cos_anneal=cos_anneal, eps=eps,
                           gradient=gradient, curvature=curvature, jitter=jitter,
                           generator=self.generator if jitter else None, background=rc.background,
                           sampler=rc.sampler, fine_samples=rc.fine_samples, up_sample_rounds=rc.up_sample_rounds,
                           early_stop=rc.early_stop, skip_alpha=rc.skip_alpha,
                           views=views if self.model.appearance_views else None, taps=int(self.cfg.train.taps),
                           world_rays=world_rays)

    def lr_factor(self):
        """The learning rate of this step as a fraction of the configured one."""
        return learning_rate_factor(self.step, self.cfg.train)

    def sample_rays(self):
        """A random batch of the training views' rays on the training device, in the model's space:
        origins, directions, colours, mask values (None without masks) and each ray's view."""
        return tuple(None if t is None else t.to(self.device)
                     for t in self.data.sample(self.batch.rays, self.generator, with_views=True))

    def schedule_step(self):
        """The step the coarse-to-fine schedules (levels, eps, curvature weight) are at: the job's step
        (a dynamic job's later frames restart them)."""
        return self.step

    def curvature_applies(self):
        """Whether the curvature loss runs: a weight, and numerical gradients (their taps give the
        Laplacian; the analytic mode has none, engine.nn.model.SDFNetwork.with_gradient)."""
        return self.cfg.train.curvature_weight > 0 and self.cfg.train.gradient == "numerical"

    def rays_for_step(self):
        """(origins, directions, colours, mask, views, world rays) of this step's batch: the model's
        rays and the background's (None: the same)."""
        return (*self.sample_rays(), None)

    def train_step(self):
        cfg, tc = self.cfg, self.cfg.train
        at = self.schedule_step()
        levels = active_levels(at, cfg, cfg.encoding.levels)
        self.model.sdf.grid.set_active_levels(levels)
        eps = numerical_step(at, cfg, self.model.sdf.grid.resolutions)
        if self.step % cfg.render.occupancy_update_every == 0:
            self.grid.update(self.sdf_fn, self.model.sharpness())
        factor = self.lr_factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor * self.group_scale(group, levels)
        origins, dirs, rgb_gt, mask, views, world_rays = self.rays_for_step()
        out = self.render(origins, dirs, cos_anneal=min(1.0, self.step / max(1, cfg.render.cos_anneal_iters)),
                          eps=eps, gradient=tc.gradient, curvature=self.curvature_applies(), jitter=True, views=views,
                          world_rays=world_rays)
        self.last_rays, self.last_samples = origins.shape[0], out["evaluated"]
        self.batch.update(self.last_rays, self.last_samples)
        loss, losses = training_losses(out, rgb_gt, mask, cfg, at)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.before_step()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        mse = float(((out["rgb"].detach() - rgb_gt) ** 2).mean())
        return float(loss.detach()), {k: float(v.detach()) for k, v in losses.items()}, -10.0 * math.log10(max(mse, 1e-10)), levels

    def before_step(self):
        """Between the backward and the optimiser step (data parallelism averages the gradients here)."""

    def run(self, resume=False):
        tc = self.cfg.train
        self.load()
        if resume:
            latest = self.resume_checkpoint()
            if latest is None:
                self.out.warn("--resume: the job has no checkpoint yet; starting from the beginning")
            else:
                self.out.log(f"resumed from {latest} at step {self.step}")
                rows = self.model.appearance_views
                if rows and rows != len(self.rig.views):
                    raise InputError(f"--resume: {latest} has an appearance embedding of {rows} views, but the job "
                                     f"now trains {len(self.rig.views)}: the rig or data.holdout_every changed")
        self.emit_train_stage()
        self.train_until(tc.iterations)
        self.save_checkpoint()
        outputs = self.extract()
        if self.cfg.export.faces > 0:  # the textured mesh too (train --export-faces N)
            from ..export.run import export_trained
            outputs.update(export_trained(self))
        return outputs

    def emit_train_stage(self):
        n = self.data.normalization
        self.out.emit(protocol.STAGE, name="train",
                      region={"center": [round(float(c), 6) for c in n.center], "radius": round(n.radius, 6)})

    def position(self):
        """Where training stands, for the cancelled event."""
        return {"iteration": self.step}

    def stop_if_cancelled(self):
        """On a cancel request: checkpoint, say so, and raise Cancelled."""
        if self.cancel is not None and self.cancel.is_set():
            path = self.save_checkpoint()
            self.out.log(f"cancelled at step {self.step}; checkpoint {path}")
            self.out.emit(protocol.CANCELLED, checkpoint=path, **self.position())
            raise Cancelled()

    def train_until(self, end, begin=0, report=None):
        """Train from self.step up to step `end`, with checkpoints, previews and progress events whose
        iteration and total count from step `begin`. `report(rate)` may add or replace progress fields
        (the dynamic trainer's frame and whole-sequence figures); rate is in steps per second."""
        tc = self.cfg.train
        start_step, started, last_report = self.step, time.monotonic(), 0.0
        while self.step < end:
            self.stop_if_cancelled()
            loss, losses, psnr, levels = self.train_step()
            self.last_loss = loss
            now = time.monotonic()
            if now - last_report > 0.5 or self.step == end or self.step == start_step + 1:
                last_report = now
                rate = (self.step - start_step) / max(now - started, 1e-6)
                fields = dict(iteration=self.step - begin, total=end - begin, loss=round(loss, 6),
                              losses={k: round(v, 6) for k, v in losses.items()}, psnr=round(psnr, 3),
                              eta_s=round((end - self.step) / max(rate, 1e-6), 1), frame=None, levels=levels,
                              inv_s=round(float(self.model.sharpness().detach()), 2), it_per_s=round(rate, 2),
                              rays=self.last_rays, samples=self.last_samples)
                if report is not None:
                    fields.update(report(rate))
                self.out.emit(protocol.PROGRESS, **fields)
                self.out.log(f"step {fields['iteration']}/{fields['total']} loss {loss:.4f} psnr {psnr:.2f} "
                             f"levels {levels} s {fields['inv_s']:.1f} {rate:.2f} it/s eta {fields['eta_s']:.0f}s")
            if tc.checkpoint_every and self.step % tc.checkpoint_every == 0 and self.step < end:
                self.save_checkpoint()
            if tc.preview_every and (self.step - begin) % tc.preview_every == 0 and self.step < end:
                self.write_preview()

    # -- meshes ---------------------------------------------------------------------------------
    def region_bounds(self):
        cells = self.grid.cell_centers()[self.grid.region].cpu()
        half_cell = self.grid.cell_size / 2
        lo = (cells.min(0).values - half_cell).clamp(-1, 1).numpy()
        hi = (cells.max(0).values + half_cell).clamp(-1, 1).numpy()
        center, half = (lo + hi) / 2, float((hi - lo).max() / 2)
        return center - half, center + half

    def mesh(self, resolution, check=None, colors=True):
        """The surface in WORLD coordinates with vertex colours (the normal as viewing direction; None
        when `colors` is off). `check()` runs between chunks (default: stop_if_cancelled)."""
        self.model.sdf.grid.set_active_levels(self.cfg.encoding.levels)
        region = self.grid.region

        def inside(points):
            return region[self.grid.index(points.to(self.device))].cpu()

        vertices, faces = extract_mesh(self.sdf_fn, resolution, self.region_bounds(), block=self.cfg.mesh.block,
                                       inside_fn=inside, check=check or self.stop_if_cancelled)
        if self.cfg.mesh.largest_component and len(faces):
            vertices, faces = largest_component(vertices, faces)
        colors = self.vertex_colors(vertices) if len(vertices) and colors else None
        return self.data.normalization.to_world(vertices), faces, colors

    @torch.no_grad()
    def vertex_colors(self, vertices, chunk=65536):
        colors = []
        for x in torch.tensor(vertices, dtype=torch.float32, device=self.device).split(chunk):
            _, grad, feat, _ = self.model.sdf.with_gradient(x, self.model.sdf.finest_cell())
            normal = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            colors.append(self.model.color(feat, normal, -normal).cpu())
        return torch.cat(colors).numpy()

    def write_preview(self):
        levels = self.model.sdf.grid.active_levels
        vertices, faces, colors = self.mesh(64)
        self.model.sdf.grid.set_active_levels(levels)
        path = os.path.join(self.job_dir, protocol.PREVIEWS_DIR, f"preview_{self.step:07d}.ply")
        write_ply(path, vertices, faces, colors)
        self.out.emit(protocol.PREVIEW, path=path, iteration=self.step)

    def extract(self):
        self.out.emit(protocol.STAGE, name="extract")
        resolution = self.cfg.mesh.resolution
        self.out.log(f"extracting the surface at resolution {resolution}")
        vertices, faces, colors = self.mesh(resolution)
        if len(faces) == 0:
            raise RuntimeError("training ended without a surface (the SDF has no zero crossing in the region); "
                               "check the masks and cameras, or train for more iterations")
        path = os.path.join(self.job_dir, protocol.MESHES_DIR, protocol.STATIC_MESH_FILE)
        write_ply(path, vertices, faces, colors)
        self.out.log(f"wrote {path}: {len(vertices)} vertices, {len(faces)} faces")
        self.out.emit(protocol.MESH, path=path, frame=None, vertices=len(vertices), faces=len(faces))
        return {"mesh": path}


def write_config(job_dir, cfg):
    path = os.path.join(job_dir, protocol.CONFIG_FILE)
    protocol.write_json(path, cfg.to_dict())
