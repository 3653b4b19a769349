"""Dynamic scenes (NeuS2): a multi-view video trained frame by frame into a mesh sequence.

The first frame trains like a static scene (train.iterations steps). Each later frame starts from the
previous frame's weights: first its rigid motion relative to the previous frame is predicted with the
network frozen and every level open (global transformation prediction, engine/train/motion.py), which
places the frame's rays in the canonical space the network lives in; then, as NeuS2 does, the frame trains
like a new job for dynamic.frame_iterations steps: a fresh optimiser, the coarse-to-fine schedules
(levels, eps, curvature weight) restarted and run FRAME_SCHEDULE_SHARE of the frame's steps, and the
frame's motion trained jointly with the network (NeuS2's finetune_global_movement) once every level is
open again, so that it does not drift. The background model (unmasked scenes) sees the world's rays: it does not move with the object.
Every frame ends with its mesh, JOB/meshes/frame_%06d.ply, and JOB/meshes/sequence.json rewritten to
list every finished frame.
"""
import math
import os
import time

import numpy as np
import torch

from ..io import protocol
from ..config import InputError
from ..data import RayDataset
from .motion import axis_angle_to_matrix, compose, from_canonical, matrix_to_axis_angle, to_canonical, world_from_canonical
from ..io.ply import write_ply
from ..io.sequence import sequence_path, write_sequence
from ..render import OccupancyGrid
from .checkpoints import load_newest_intact
from .trainer import Trainer, region_grid

# Global transformation prediction (SequenceTrainer.predict_motion): Adam on the motion, its learning
# rate warmed up over PREDICTION_WARMUP steps, in windows of PREDICTION_WINDOW steps; the learning rate
# halves whenever a window's mean motion moved less than PREDICTION_STALL of Adam's full speed since the
# window before, down to PREDICTION_FINAL_LR of dynamic.prediction_lr, where the motion is the mean of
# PREDICTION_AVERAGED windows. PROBE_BATCHES batches of rays (fixed for the frame) choose the start and
# score the result.
PREDICTION_WARMUP = 10
PREDICTION_WINDOW = 10
PREDICTION_STALL = 0.3
PREDICTION_FINAL_LR = 0.25
PREDICTION_AVERAGED = 5
PROBE_BATCHES = 4
PROBE, STEPS = 1, 2      # purposes of the prediction's seeded generators
# A later frame's levels all open within this share of its steps (or train.level_every's pace, if faster),
# so that its last steps train the finest level too.
FRAME_SCHEDULE_SHARE = 0.5


def orthonormal(rotation):
    """The rotation nearest to a 3x3 matrix (keeps a long chain of products a rotation)."""
    u, _, vt = np.linalg.svd(rotation)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


class SequenceTrainer(Trainer):
    """Trains the frames of a dynamic rig one after another (see the module's docstring)."""

    def __init__(self, session, emitter, cancel=None):
        super().__init__(session, emitter, cancel)
        self.frames = list(session.frames)
        self.index = 0                                  # position in self.frames of the frame in hand
        self.phase = "train"                            # "predict" until a later frame's motion is known
        self.rotation, self.translation = np.eye(3), np.zeros(3)    # this frame's canonical transform
        self.previous = (np.eye(3), np.zeros(3))        # the previous frame's canonical transform
        self.relative = (np.eye(3), np.zeros(3))        # the previous frame's motion (a starting guess)
        # The frame's motion relative to the previous frame (axis-angle, translation), trained with the
        # network after the prediction; unused by the first frame.
        self.motion = torch.zeros(6, device=self.device, requires_grad=True)
        self.entries = []                               # sequence.json entries of the finished frames
        self.frame_clock = time.monotonic()             # when the frame in hand started (minus resumed time)

    @property
    def frame(self):
        return self.frames[self.index]

    # -- steps and work -------------------------------------------------------------------------
    def prediction_steps(self):
        dc = self.cfg.dynamic
        return dc.prediction_iterations if dc.predict_transform else 0

    def frame_begin(self, index):
        """The global training step at which frame `index` (of the job's frames) starts training."""
        return 0 if index == 0 else self.cfg.train.iterations + (index - 1) * self.cfg.dynamic.frame_iterations

    def work_before(self, index):
        """Steps (training and prediction) of the job's frames before `index`."""
        return 0 if index == 0 else (self.cfg.train.iterations
                                     + (index - 1) * (self.cfg.dynamic.frame_iterations + self.prediction_steps()))

    def report(self, rate, prediction_step=None):
        """Progress fields for the whole sequence; rate: steps per second of the current phase."""
        total = self.work_before(len(self.frames))
        if prediction_step is not None:
            done = self.work_before(self.index) + prediction_step
        else:
            done = (self.work_before(self.index) + (self.prediction_steps() if self.index else 0)
                    + self.step - self.frame_begin(self.index))
        in_frame = self.work_before(self.index + 1) - done
        later = [e["seconds"] for e in self.entries[1:]]
        if later:  # whole later frames take what they took so far (extraction included)
            eta = in_frame / max(rate, 1e-6) + (len(self.frames) - self.index - 1) * float(np.mean(later))
        else:
            eta = (total - done) / max(rate, 1e-6)
        return {"frame": self.frame, "frame_index": self.index, "frame_count": len(self.frames),
                "phase": "predict" if prediction_step is not None else "train",
                "sequence_progress": round(min(1.0, done / max(1, total)), 5), "eta_s": round(eta, 1)}

    def schedule_step(self):
        """The first frame's step; a later frame's own step, sped up so that its levels all open within
        FRAME_SCHEDULE_SHARE of its steps (train.level_every's pace when that is faster)."""
        if self.index == 0:
            return self.step
        tc, dc = self.cfg.train, self.cfg.dynamic
        closed = max(1, self.cfg.encoding.levels - min(tc.start_levels, self.cfg.encoding.levels))
        frame_every = min(tc.level_every, max(1, int(dc.frame_iterations * FRAME_SCHEDULE_SHARE) // closed))
        return (self.step - self.frame_begin(self.index)) * tc.level_every // frame_every

    def extra_param_groups(self):
        """The frame's motion, trained with the network: its learning rate starts where the prediction's
        ended (PREDICTION_FINAL_LR of dynamic.prediction_lr) and follows the frame's decay; none without
        the prediction (the network absorbs the motion then)."""
        dc = self.cfg.dynamic
        lr = dc.prediction_lr * PREDICTION_FINAL_LR / dc.frame_lr_factor if dc.predict_transform else 0.0
        return [{"params": [self.motion], "lr": lr, "name": "motion", "weight_decay": 0.0}]

    def group_scale(self, group, levels):
        """The motion trains once every level is open: a coarse field's gradient would pull it toward
        aligning a blur (the prediction ran with every level)."""
        if group.get("name") == "motion" and levels < self.cfg.encoding.levels:
            return 0.0
        return 1.0

    def lr_factor(self):
        if self.index == 0:
            return super().lr_factor()
        dc = self.cfg.dynamic
        progress = min(1.0, (self.step - self.frame_begin(self.index)) / max(1, dc.frame_iterations))
        return dc.frame_lr_factor * (self.cfg.train.final_lr_factor / dc.frame_lr_factor) ** progress

    def position(self):
        iteration = 0 if self.phase == "predict" else self.step - self.frame_begin(self.index)
        return {"iteration": iteration, "frame": self.frame if self.index < len(self.frames) else None}

    # -- data of one frame -----------------------------------------------------------------------
    def training_views(self):
        return self.session.views(self.out, frame=self.frame)

    def load_frame(self, index):
        """Make frame `index` the one in hand: its views (same region, same normalisation)."""
        self.index = index
        self.rig.views, self.held_out = self.training_views()
        self.data = RayDataset(self.rig, background=self.cfg.render.background, normalization=self.data.normalization,
                               downscale=self.cfg.data.downscale, use_masks=self.cfg.data.use_masks)

    def transform_tensors(self, rotation, translation):
        return (torch.as_tensor(rotation, dtype=torch.float32, device=self.device),
                torch.as_tensor(translation, dtype=torch.float32, device=self.device))

    def canonical_transform(self):
        """The frame's canonical transform (R^c, T^c) as tensors: the previous frame's composed with the
        trained motion (differentiable in it); the first frame's is the identity."""
        if self.index == 0:
            return self.transform_tensors(np.eye(3), np.zeros(3))
        previous = self.transform_tensors(*self.previous)
        return compose(previous[0], previous[1], axis_angle_to_matrix(self.motion[:3]), self.motion[3:])

    def settle_transform(self):
        """self.rotation, self.translation and self.relative from the trained motion (meshes, the
        sequence's matrices and the next frame's starting guess use them)."""
        if self.index == 0:
            return
        motion = self.motion.detach().double().cpu()
        relative = (axis_angle_to_matrix(motion[:3]).numpy(), motion[3:].numpy().copy())
        self.relative = relative
        rotation, shift = compose(self.previous[0], self.previous[1], *relative)
        self.rotation, self.translation = orthonormal(rotation), shift

    def rays_for_step(self):
        """The frame's rays moved into the canonical space, x_c = R^c (x + T^c), through the trained
        motion, and as they are in the world (the background's). (Their views go with them, unused:
        dynamic jobs have no appearance embedding, engine.session.resolve_appearance.)"""
        origins, dirs, rgb, mask, views = self.sample_rays()
        rotation, translation = self.canonical_transform()
        return (to_canonical(origins, rotation, translation), dirs @ rotation.T, rgb, mask, views,
                (origins, dirs))

    def update_region(self):
        """The occupancy region in canonical space from this frame's silhouettes, moved by its transform."""
        resolution = self.cfg.render.occupancy_resolution
        rotation, translation = self.rotation, self.translation
        region = region_grid(self.data, resolution, lambda c: from_canonical(c, rotation, translation))
        self.grid = OccupancyGrid(resolution, region, self.device)
        self.grid.update(self.sdf_fn, self.model.sharpness())

    # -- global transformation prediction --------------------------------------------------------
    def prediction_generator(self, purpose):
        """The prediction's own random numbers (rays and jitter), seeded by train.seed, the frame and
        `purpose` (PROBE: the fixed batch that compares motions; STEPS: the optimiser's batches): the
        same frame predicts the same motion whatever ran before it (a resumed job included) and the
        training draws stay the trainer's own."""
        seed = np.random.SeedSequence([self.cfg.train.seed % 2 ** 63, self.frame % 2 ** 63, purpose])
        return torch.Generator().manual_seed(int(seed.generate_state(1, np.uint64)[0]))

    def prediction_loss(self, axis_angle, translation, batch, generator=None):
        """Colour and silhouette loss of the frame's rays placed by the relative motion (axis_angle,
        translation) after the previous frame's canonical transform, through the frozen network;
        the samples along the rays are jittered with `generator` (None: the trainer's)."""
        origins, dirs, rgb, mask = batch
        previous = self.transform_tensors(*self.previous)
        rotation, shift = compose(previous[0], previous[1], axis_angle_to_matrix(axis_angle), translation)
        saved = self.generator
        if generator is not None:  # render() jitters with self.generator
            self.generator = generator
        try:
            out = self.render(to_canonical(origins, rotation, shift), dirs @ rotation.T, cos_anneal=1.0,
                              eps=self.model.sdf.finest_cell(), gradient=self.cfg.train.gradient, jitter=True,
                              world_rays=(origins, dirs))
        finally:
            self.generator = saved
        self.last_rays, self.last_samples = origins.shape[0], out["evaluated"]  # for the progress events
        loss = (out["rgb"] - rgb).abs().mean()
        if mask is not None:
            opacity = out["opacity"].clamp(1e-3, 1.0 - 1e-3)
            loss = loss + self.cfg.dynamic.prediction_mask_weight * torch.nn.functional.binary_cross_entropy(opacity, mask)
        return loss

    def probe_loss(self, motion):
        """The prediction loss of `motion` (axis-angle and translation, 6 numbers) on the frame's probe:
        PROBE_BATCHES batches of rays with their jitter, the same draws at every call, so that two
        motions are compared on common random numbers."""
        generator = self.prediction_generator(PROBE)
        axis_angle, translation = torch.as_tensor(motion, dtype=torch.float32, device=self.device).split(3)
        total = 0.0
        with torch.no_grad():
            for _ in range(PROBE_BATCHES):
                batch = tuple(None if t is None else t.to(self.device) for t in self.data.sample(self.batch.rays, generator))
                total += float(self.prediction_loss(axis_angle, translation, batch, generator))
        return total / PROBE_BATCHES

    def predict_motion(self):
        """Optimise the frame's rigid motion relative to the previous frame with the network frozen
        and set the frame's canonical transform; returns the probe loss of the predicted motion.

        It starts from the better, on the probe, of no motion and the previous frame's motion. Adam
        runs at dynamic.prediction_lr, warmed up over PREDICTION_WARMUP steps (Adam's first steps are
        as long for a noisy gradient as for a clear one: a rotation the images show weakly would run
        astray, then creep back), in windows of PREDICTION_WINDOW steps. Once the mean motion of a
        window has moved less than PREDICTION_STALL of Adam's full speed (lr a step) on each of its six
        numbers since the window before, the motion has stopped approaching and the learning rate
        halves, down to PREDICTION_FINAL_LR of dynamic.prediction_lr. Once it stops there too, the
        motion is the mean (Polyak) of PREDICTION_AVERAGED windows from there: converged. At most
        dynamic.prediction_iterations steps. Rays and jitter come from the frame's own seeded
        generators (prediction_generator), not from the trainer's."""
        self.out.emit(protocol.STAGE, name="predict", frame=self.frame)
        self.model.sdf.grid.set_active_levels(self.cfg.encoding.levels)  # all that the previous frame learnt
        frozen = [p for p in self.model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            still = np.zeros(6)
            starts = [still] + ([] if np.allclose(self.relative[0], np.eye(3)) and not np.any(self.relative[1])
                                else [np.concatenate([matrix_to_axis_angle(self.relative[0]), self.relative[1]])])
            scores = [self.probe_loss(m) for m in starts]
            start = starts[int(np.argmin(scores))]
            motion, steps, converged = self.optimise_motion(start)
            loss = self.probe_loss(motion)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        with torch.no_grad():
            self.motion.copy_(torch.as_tensor(motion, dtype=torch.float32))
        self.settle_transform()
        angle = math.degrees(np.linalg.norm(motion[:3]))
        self.out.log(f"frame {self.frame}: predicted motion {angle:.2f} deg, translation "
                     f"{np.round(self.relative[1], 4).tolist()} (region radii) in {steps} steps"
                     f"{'' if converged else ' (not converged: dynamic.prediction_iterations reached)'}; "
                     f"loss {loss:.4f}, {scores[0]:.4f} without motion")
        return loss

    def optimise_motion(self, start):
        """Adam on the motion (6 numbers: axis-angle, translation) from `start`, as predict_motion
        describes; returns (the motion, steps taken, whether it converged)."""
        dc = self.cfg.dynamic
        generator = self.prediction_generator(STEPS)
        axis_angle, translation = (x.clone().requires_grad_(True) for x in self.transform_tensors(start[:3], start[3:]))
        optimizer = torch.optim.Adam([axis_angle, translation], lr=dc.prediction_lr, betas=(0.9, 0.99))
        lr, final_lr = dc.prediction_lr, dc.prediction_lr * PREDICTION_FINAL_LR
        window, means, averaged = [], [], []  # this window's motions; every window's mean; the averaged ones
        motion = np.asarray(start, dtype=float)
        started, last_report, loss, step = time.monotonic(), 0.0, float("nan"), 0
        while step < dc.prediction_iterations and len(averaged) < PREDICTION_AVERAGED:
            self.stop_if_cancelled()
            if step < PREDICTION_WARMUP:
                for group in optimizer.param_groups:
                    group["lr"] = lr * (step + 1) / PREDICTION_WARMUP
            batch = tuple(None if t is None else t.to(self.device) for t in self.data.sample(self.batch.rays, generator))
            value = self.prediction_loss(axis_angle, translation, batch, generator)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if all(torch.isfinite(p.grad).all() for p in (axis_angle, translation)):
                optimizer.step()  # (a batch without a usable gradient must not spoil the motion)
                loss = float(value.detach())
            step += 1
            motion = torch.cat([axis_angle, translation]).detach().double().cpu().numpy()
            window.append(motion)
            if len(window) == PREDICTION_WINDOW:
                means.append((np.mean(window, 0), lr))
                window = []
                if averaged:
                    averaged.append(means[-1][0])
                elif len(means) > 1 and (np.abs(means[-1][0] - means[-2][0]).max()
                                         < PREDICTION_STALL * lr * PREDICTION_WINDOW):
                    if lr > final_lr:  # it stopped approaching: a smaller step for a closer look
                        lr = max(lr * 0.5, final_lr)
                        for group in optimizer.param_groups:
                            group["lr"] = lr
                    else:              # ... and at the smallest, average from here (with the window before)
                        averaged = [m for m, at in means[-2:] if at == final_lr]
            now = time.monotonic()
            if now - last_report > 0.5 or step == dc.prediction_iterations or len(averaged) >= PREDICTION_AVERAGED:
                last_report = now
                rate = step / max(now - started, 1e-6)
                self.out.emit(protocol.PROGRESS, iteration=step, total=dc.prediction_iterations,
                              loss=round(loss, 6), losses={"prediction": round(loss, 6)}, psnr=None,
                              it_per_s=round(rate, 2), rays=self.last_rays, samples=self.last_samples,
                              **self.report(rate, prediction_step=step))
        if averaged:  # (the steps of a window the cap cut short count too)
            motion = ((np.sum(averaged, 0) * PREDICTION_WINDOW + np.sum(window, 0))
                      / (len(averaged) * PREDICTION_WINDOW + len(window)))
        return np.asarray(motion, dtype=float), step, len(averaged) >= PREDICTION_AVERAGED

    # -- meshes ----------------------------------------------------------------------------------
    def world_from_canonical(self):
        n = self.data.normalization
        return world_from_canonical(self.rotation, self.translation, n.center, n.radius)

    def mesh(self, resolution, coordinates="world"):
        """The frame's surface in world coordinates (where the object is at this frame), or in the
        canonical frame's placement with coordinates="canonical"."""
        vertices, faces, colors = super().mesh(resolution)
        if coordinates == "world" and len(vertices):
            m = self.world_from_canonical()
            vertices = vertices @ m[:3, :3].T + m[:3, 3]
        return vertices, faces, colors

    def finish_frame(self, loss):
        """Write the frame's mesh, add it to sequence.json and say so."""
        self.out.emit(protocol.STAGE, name="extract", frame=self.frame)
        coordinates = self.cfg.dynamic.coordinates
        vertices, faces, colors = self.mesh(self.cfg.mesh.resolution, coordinates)
        if len(faces) == 0:
            raise RuntimeError(f"frame {self.frame} ended without a surface (the SDF has no zero crossing in the "
                               "region); check this frame's masks and cameras, or train longer")
        folder = os.path.join(self.job_dir, protocol.MESHES_DIR)
        path = os.path.join(folder, protocol.FRAME_MESH_FILE.format(self.frame))
        write_ply(path, vertices, faces, colors)
        seconds = time.monotonic() - self.frame_clock
        matrix = [[round(float(x), 9) for x in row] for row in self.world_from_canonical()]
        self.entries = [e for e in self.entries if e["frame"] != self.frame] + [
            {"frame": self.frame, "mesh": os.path.basename(path), "world_from_canonical": matrix,
             "seconds": round(seconds, 3)}]
        sequence = self.write_sequence()
        self.out.log(f"frame {self.frame}: wrote {path} ({len(vertices)} vertices) in {seconds:.1f} s")
        self.out.emit(protocol.MESH, path=path, frame=self.frame, vertices=len(vertices), faces=len(faces),
                      iteration=self.step - self.frame_begin(self.index), loss=round(loss, 6),
                      seconds=round(seconds, 3), world_from_canonical=matrix, coordinates=coordinates,
                      sequence=sequence)

    def remove_old_sequence(self):
        """A fresh run into a used job folder: the frames of an earlier run must not look like this one's."""
        folder = os.path.join(self.job_dir, protocol.MESHES_DIR)
        for name in os.listdir(folder):
            if name == protocol.SEQUENCE_FILE or (name.startswith("frame_") and name.endswith(".ply")):
                os.remove(os.path.join(folder, name))

    def write_sequence(self):
        return write_sequence(sequence_path(self.job_dir), self.cfg.dynamic.coordinates, self.entries)

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_extra(self):
        return {"sequence": {
            "frames": self.frames, "index": self.index, "phase": self.phase,
            "rotation": self.rotation.tolist(), "translation": self.translation.tolist(),
            "motion": self.motion.detach().cpu().tolist(),
            "previous": [x.tolist() for x in self.previous], "relative": [x.tolist() for x in self.relative],
            "entries": self.entries, "frame_seconds": time.monotonic() - self.frame_clock}}

    def restore_sequence(self, state, path):
        sequence = state.get("sequence")
        if sequence is None:
            raise InputError(f"--resume: {path} is not a checkpoint of a dynamic job")
        if list(sequence["frames"]) != self.frames:
            raise InputError(f"--resume: the job trains frames {sequence['frames'][0]} to {sequence['frames'][-1]}, "
                             f"not {self.frames[0]} to {self.frames[-1]}; leave --frames out to go on")
        self.phase, self.entries = sequence["phase"], list(sequence["entries"])
        self.rotation, self.translation = np.array(sequence["rotation"]), np.array(sequence["translation"])
        self.previous = tuple(np.array(x) for x in sequence["previous"])
        self.relative = tuple(np.array(x) for x in sequence["relative"])
        self.frame_clock = time.monotonic() - sequence["frame_seconds"]
        with torch.no_grad():  # (a checkpoint from before the motion was trained: the prediction's)
            self.motion.copy_(torch.as_tensor(sequence.get("motion", np.concatenate(
                [matrix_to_axis_angle(self.relative[0]), self.relative[1]])), dtype=torch.float32))
        index = sequence["index"]
        if 0 < index < len(self.frames):
            self.load_frame(index)
        self.index = index

    # -- the sequence ------------------------------------------------------------------------------
    def run(self, resume=False):
        tc = self.cfg.train
        self.load()
        self.out.log(f"dynamic rig: {len(self.frames)} frames ({self.frames[0]} to {self.frames[-1]}), "
                     f"{tc.iterations} steps for the first, {self.cfg.dynamic.frame_iterations} for each next; "
                     f"global transformation prediction {'on' if self.prediction_steps() else 'off'}")
        latest, state = (load_newest_intact(self.job_dir, self.device, self.backend, self.out.warn) if resume
                         else (None, None))
        if latest is None:
            if resume:
                self.out.warn("--resume: the job has no checkpoint yet; starting from the beginning")
            self.remove_old_sequence()
        else:
            self.restore_sequence(state, latest)   # the frame and its motion first: the optimiser holds it
            self.load_checkpoint(latest, state)
            where = f"frame {self.frame} ({self.phase})" if self.index < len(self.frames) else "the end of the sequence"
            self.out.log(f"resumed from {latest} at {where}, step {self.step}")
        self.emit_train_stage()
        while self.index < len(self.frames):
            self.train_frame()
        sequence = sequence_path(self.job_dir)
        return {"sequence": sequence, "meshes": os.path.dirname(sequence), "frames": len(self.entries)}

    def train_frame(self):
        """Train the frame in hand (from wherever a resumed checkpoint left it) and write its mesh."""
        index = self.index
        self.out.emit(protocol.STAGE, name="frame", frame=self.frame, index=index, count=len(self.frames))
        loss = None
        if self.phase == "predict":
            if self.prediction_steps():
                loss = self.predict_motion()
            else:
                self.rotation, self.translation = self.previous
            self.phase = "train"
            self.make_optimizer()  # the frame trains like a new job (NeuS2), its motion with the network
            self.update_region()
            self.out.emit(protocol.STAGE, name="train", frame=self.frame)
        end = self.frame_begin(index + 1)
        if self.step < end:
            self.train_until(end, begin=self.frame_begin(index), report=self.report)
            loss = self.last_loss
        self.settle_transform()
        self.finish_frame(loss if loss is not None else float("nan"))
        # The next frame starts from here: this frame's transform and weights, checkpointed.
        self.previous, self.index, self.phase = (self.rotation, self.translation), index + 1, "predict"
        self.frame_clock = time.monotonic()
        self.save_checkpoint()
        if self.index < len(self.frames):
            self.load_frame(self.index)
