"""Dynamic scenes (NeuS2): a multi-view video trained frame by frame into a mesh sequence.

The first frame trains like a static scene (train.iterations steps). Each later frame starts from the
previous frame's weights: first its rigid motion relative to the previous frame is predicted with the
network frozen (global transformation prediction, engine/motion.py), which places the frame's rays in
the canonical space the network lives in; then the network trains for dynamic.frame_iterations steps
to follow what the motion does not explain (deformation). Every frame ends with its mesh,
JOB/meshes/frame_%06d.ply, and JOB/meshes/sequence.json rewritten to list every finished frame.
"""
import json
import math
import os
import time

import numpy as np
import torch

from . import protocol
from .config import InputError, parse_frames
from .data import RayDataset
from .motion import axis_angle_to_matrix, compose, from_canonical, matrix_to_axis_angle, to_canonical, world_from_canonical
from .plyio import write_ply
from .render import OccupancyGrid
from .train import Trainer, active_levels, numerical_step, region_grid

def select_frames(rig, spec):
    """The rig's frame numbers within `spec` (dynamic.frames / --frames), sorted; InputError when none."""
    first, last = parse_frames(spec) if spec else (None, None)
    frames = [f for f in rig.frames if (first is None or f >= first) and (last is None or f <= last)]
    if not frames:
        raise InputError(f"--frames {spec}: the rig {rig.path} has no frame in that range "
                         f"(its frames: {rig.frames[0]} to {rig.frames[-1]})")
    return frames


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

    def __init__(self, cfg, rig, job_dir, emitter, cancel=None, region=None):
        super().__init__(cfg, rig, job_dir, emitter, cancel, region)
        self.source_views = list(rig.views)
        self.frames = select_frames(rig, cfg.dynamic.frames)
        self.index = 0                                  # position in self.frames of the frame in hand
        self.phase = "train"                            # "predict" until a later frame's motion is known
        self.rotation, self.translation = np.eye(3), np.zeros(3)    # this frame's canonical transform
        self.previous = (np.eye(3), np.zeros(3))        # the previous frame's canonical transform
        self.relative = (np.eye(3), np.zeros(3))        # the previous frame's motion (a starting guess)
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
    def select_views(self, views):
        return super().select_views([v for v in self.source_views if v.frame == self.frame])

    def load_frame(self, index):
        """Make frame `index` the one in hand: its views (same region, same normalisation)."""
        self.index = index
        self.rig.views, self.held_out = self.select_views(None)
        self.data = RayDataset(self.rig, background=self.cfg.render.background, normalization=self.data.normalization,
                               downscale=self.cfg.data.downscale, use_masks=self.cfg.data.use_masks)

    def transform_tensors(self, rotation, translation):
        return (torch.as_tensor(rotation, dtype=torch.float32, device=self.device),
                torch.as_tensor(translation, dtype=torch.float32, device=self.device))

    def sample_rays(self):
        """The frame's rays moved into the canonical space: x_c = R^c (x + T^c)."""
        origins, dirs, rgb, mask = super().sample_rays()
        rotation, translation = self.transform_tensors(self.rotation, self.translation)
        return to_canonical(origins, rotation, translation), dirs @ rotation.T, rgb, mask

    def update_region(self):
        """The occupancy region in canonical space from this frame's silhouettes, moved by its transform."""
        resolution = self.cfg.render.occupancy_resolution
        rotation, translation = self.rotation, self.translation
        region = region_grid(self.data, resolution, lambda c: from_canonical(c, rotation, translation))
        self.grid = OccupancyGrid(resolution, region, self.device)
        self.grid.update(self.sdf_fn, self.model.sharpness())

    # -- global transformation prediction --------------------------------------------------------
    def prediction_loss(self, axis_angle, translation, batch):
        """Colour and silhouette loss of the frame's rays placed by the relative motion (axis_angle,
        translation) after the previous frame's canonical transform, through the frozen network."""
        origins, dirs, rgb, mask = batch
        previous = self.transform_tensors(*self.previous)
        rotation, shift = compose(previous[0], previous[1], axis_angle_to_matrix(axis_angle), translation)
        out = self.render(to_canonical(origins, rotation, shift), dirs @ rotation.T, cos_anneal=1.0,
                          eps=numerical_step(self.step, self.cfg, self.model.sdf.grid.resolutions),
                          gradient=self.cfg.train.gradient, jitter=True)
        self.last_rays, self.last_samples = origins.shape[0], out["evaluated"]  # for the progress events
        loss = (out["rgb"] - rgb).abs().mean()
        if mask is not None:
            opacity = out["opacity"].clamp(1e-3, 1.0 - 1e-3)
            loss = loss + self.cfg.dynamic.prediction_mask_weight * torch.nn.functional.binary_cross_entropy(opacity, mask)
        return loss

    def predict_motion(self):
        """Optimise the frame's rigid motion relative to the previous frame with the network frozen,
        from the better (on one batch) of no motion and the previous frame's motion; sets the frame's
        canonical transform. Returns the final loss."""
        dc = self.cfg.dynamic
        self.out.emit(protocol.STAGE, name="predict", frame=self.frame)
        self.model.sdf.grid.set_active_levels(active_levels(self.step, self.cfg, self.cfg.encoding.levels))
        frame_rays = super().sample_rays
        starts = [(np.zeros(3), np.zeros(3)), (matrix_to_axis_angle(self.relative[0]), self.relative[1])]
        batch = frame_rays()
        with torch.no_grad():
            scores = [float(self.prediction_loss(*self.transform_tensors(w, t), batch)) for w, t in starts]
        start = starts[int(np.argmin(scores))]
        axis_angle, translation = (x.clone().requires_grad_(True) for x in self.transform_tensors(*start))
        optimizer = torch.optim.Adam([axis_angle, translation], lr=dc.prediction_lr, betas=(0.9, 0.99))
        frozen = [p for p in self.model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        loss, started, last_report = min(scores), time.monotonic(), 0.0
        try:
            for step in range(dc.prediction_iterations):
                self.stop_if_cancelled()
                for group in optimizer.param_groups:  # decay to a tenth, for a precise end
                    group["lr"] = dc.prediction_lr * 0.1 ** (step / max(1, dc.prediction_iterations))
                value = self.prediction_loss(axis_angle, translation, frame_rays())
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                if not all(torch.isfinite(p.grad).all() for p in (axis_angle, translation)):
                    continue  # a batch without a usable gradient must not spoil the motion
                optimizer.step()
                loss, now = float(value.detach()), time.monotonic()
                if now - last_report > 0.5 or step + 1 == dc.prediction_iterations:
                    last_report = now
                    rate = (step + 1) / max(now - started, 1e-6)
                    self.out.emit(protocol.PROGRESS, iteration=step + 1, total=dc.prediction_iterations,
                                  loss=round(loss, 6), losses={"prediction": round(loss, 6)}, psnr=None,
                                  it_per_s=round(rate, 2), rays=self.last_rays, samples=self.last_samples,
                                  **self.report(rate, prediction_step=step + 1))
        finally:
            for p in frozen:
                p.requires_grad_(True)
        with torch.no_grad():
            relative = (axis_angle_to_matrix(axis_angle).double().cpu().numpy(),
                        translation.detach().double().cpu().numpy())
        self.relative = relative
        rotation, shift = compose(self.previous[0], self.previous[1], *relative)
        self.rotation, self.translation = orthonormal(rotation), shift
        angle = math.degrees(np.linalg.norm(matrix_to_axis_angle(relative[0])))
        self.out.log(f"frame {self.frame}: predicted motion {angle:.2f} deg, translation "
                     f"{np.round(relative[1], 4).tolist()} (region radii); loss {loss:.4f}")
        return loss

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
        path = os.path.join(self.job_dir, protocol.MESHES_DIR, protocol.SEQUENCE_FILE)
        # One line per frame: the file is rewritten after every frame of sequences hundreds long.
        frames = ",\n  ".join(json.dumps(e, separators=(",", ":")) for e in sorted(self.entries, key=lambda e: e["frame"]))
        protocol.write_atomic(path, f'{{"coordinates": {json.dumps(self.cfg.dynamic.coordinates)},\n'
                                    f' "frames": [\n  {frames}]}}\n')
        return path

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_extra(self):
        return {"sequence": {
            "frames": self.frames, "index": self.index, "phase": self.phase,
            "rotation": self.rotation.tolist(), "translation": self.translation.tolist(),
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
        latest = self.latest_checkpoint(self.job_dir) if resume else None
        if latest is None:
            if resume:
                self.out.warn("--resume: the job has no checkpoint yet; starting from the beginning")
            self.remove_old_sequence()
        else:
            self.restore_sequence(self.load_checkpoint(latest), latest)
            where = f"frame {self.frame} ({self.phase})" if self.index < len(self.frames) else "the end of the sequence"
            self.out.log(f"resumed from {latest} at {where}, step {self.step}")
        self.emit_train_stage()
        while self.index < len(self.frames):
            self.train_frame()
        sequence = os.path.join(self.job_dir, protocol.MESHES_DIR, protocol.SEQUENCE_FILE)
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
            self.update_region()
            self.out.emit(protocol.STAGE, name="train", frame=self.frame)
        end = self.frame_begin(index + 1)
        if self.step < end:
            self.train_until(end, begin=self.frame_begin(index), report=self.report)
            loss = self.last_loss
        self.finish_frame(loss if loss is not None else float("nan"))
        # The next frame starts from here: this frame's transform and weights, checkpointed.
        self.previous, self.index, self.phase = (self.rotation, self.translation), index + 1, "predict"
        self.frame_clock = time.monotonic()
        self.save_checkpoint()
        if self.index < len(self.frames):
            self.load_frame(self.index)
