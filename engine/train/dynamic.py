"""Dynamic scenes (NeuS2): a multi-view video trained frame by frame into a mesh sequence.

The first frame trains like a static scene (train.iterations steps). Each later frame starts from the
previous frame's weights: first its rigid motion relative to the previous frame is predicted with the
network frozen and every level open (global transformation prediction, engine/train/prediction.py), which
places the frame's rays in the canonical space the network lives in; then, as NeuS2 does, the frame trains
like a new job for dynamic.frame_iterations steps: a fresh optimiser, the coarse-to-fine schedules
(levels, eps, curvature weight) restarted and run FRAME_SCHEDULE_SHARE of the frame's steps, and the
frame's motion trained jointly with the network (NeuS2's finetune_global_movement) once every level is
open again, so that it does not drift. The background model (unmasked scenes) sees the world's rays: it does not move with the object.
Every frame ends with its mesh, JOB/meshes/frame_%06d.ply, and JOB/meshes/sequence.json rewritten to
list every finished frame. Under torchrun the frames are shared out among the processes
(engine/train/ranks.py): each trains its own frames with this trainer.
"""
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
from . import ranks as spread
from .checkpoints import load_checkpoint, load_newest_intact, write_state
from .prediction import PREDICTION_FINAL_LR, MotionPrediction
from .trainer import Trainer, region_grid

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


class SequenceTrainer(MotionPrediction, Trainer):
    """Trains the frames of a dynamic rig one after another (see the module's docstring)."""

    def __init__(self, session, emitter, cancel=None):
        super().__init__(session, emitter, cancel)
        self.ranks = session.ranks or spread.Ranks()
        self.all_frames = list(session.frames)
        # The frames this process goes through; guides: frames whose motion it only predicts, on its
        # way from frame 0 to its chunk (engine.train.ranks).
        self.frames, self.guides = spread.rank_frames(self.all_frames, self.ranks.world, self.ranks.rank)
        if not self.ranks.leader:
            self.checkpoint_home = spread.rank_dir(self.job_dir, self.ranks.rank)
            os.makedirs(os.path.join(self.checkpoint_home, protocol.CHECKPOINTS_DIR), exist_ok=True)
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

    def frame_budget(self, index):
        """Training steps of the later frame `index` (of this process's frames): dynamic.frame_iterations;
        none for a guide; CHUNK_START_FACTOR times that for the first frame of a chunk that does not
        follow frame 0's training directly (it starts from frame 0's weights)."""
        if self.frames[index] in self.guides:
            return 0
        chunk_start = bool(self.guides) and self.frames[index - 1] in self.guides
        return self.cfg.dynamic.frame_iterations * (spread.CHUNK_START_FACTOR if chunk_start else 1)

    def frame_begin(self, index):
        """The global training step at which frame `index` (of this process's frames) starts training."""
        return 0 if index == 0 else self.cfg.train.iterations + sum(self.frame_budget(i) for i in range(1, index))

    def work_before(self, index):
        """Steps (training and prediction) of this process's frames before `index`."""
        return 0 if index == 0 else (self.frame_begin(index) + (index - 1) * self.prediction_steps())

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
        # (rank 0 of a spread job: its frames are the job's first ones, so the index holds in the job's count)
        count = len(self.all_frames) if self.ranks.leader else len(self.frames)
        return {"frame": self.frame, "frame_index": self.index, "frame_count": count,
                "phase": "predict" if prediction_step is not None else "train",
                "sequence_progress": round(min(1.0, done / max(1, total)), 5), "eta_s": round(eta, 1)}

    def schedule_step(self):
        """The first frame's step; a later frame's own step, sped up so that its levels all open within
        FRAME_SCHEDULE_SHARE of its steps (train.level_every's pace when that is faster)."""
        if self.index == 0:
            return self.step
        tc = self.cfg.train
        closed = max(1, self.cfg.encoding.levels - min(tc.start_levels, self.cfg.encoding.levels))
        frame_every = min(tc.level_every, max(1, int(self.frame_budget(self.index) * FRAME_SCHEDULE_SHARE) // closed))
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
        progress = min(1.0, (self.step - self.frame_begin(self.index)) / max(1, self.frame_budget(self.index)))
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

    def write_sequence(self, finished=False):
        """sequence.json with every finished frame (a spread job's rank 0 adds the other ranks'); a rank
        after 0 lists its frames in its own frames.json instead. Returns sequence.json's path."""
        path = sequence_path(self.job_dir)
        if not self.ranks.leader:
            spread.write_rank_frames(self.job_dir, self.ranks.rank, self.entries, finished)
            return path
        entries = spread.merged_entries(self.job_dir, self.ranks.world, self.entries) if self.ranks.spread else self.entries
        return write_sequence(path, self.cfg.dynamic.coordinates, entries)

    def missing_frames(self):
        """The job's frames that sequence.json does not list yet."""
        listed = {e["frame"] for e in spread.merged_entries(self.job_dir, self.ranks.world, self.entries)}
        return [f for f in self.all_frames if f not in listed]

    def stop_if_cancelled(self):
        """Stopped (a cancel, or torchrun stopping the processes because one died): a spread job's rank 0
        first lists what the other ranks finished and says which frames --resume still has to train."""
        if self.ranks.spread and self.ranks.leader and self.cancel is not None and self.cancel.is_set():
            self.write_sequence()
            missing = self.missing_frames()
            if missing:
                self.out.warn(f"frames {', '.join(map(str, missing))} are not trained yet; --resume under torchrun "
                              f"with {self.ranks.world} processes trains them")
        super().stop_if_cancelled()

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self):
        """A rank after 0 that has not started from frame 0's weights yet has nothing of its own to save
        (a resume starts it from first_frame.pt)."""
        if not self.ranks.leader and self.index == 0:
            return None
        return super().save_checkpoint()

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
        self.out.log(f"dynamic rig: {len(self.all_frames)} frames ({self.all_frames[0]} to {self.all_frames[-1]}), "
                     f"{tc.iterations} steps for the first, {self.cfg.dynamic.frame_iterations} for each next; "
                     f"global transformation prediction {'on' if self.prediction_steps() else 'off'}")
        if self.ranks.spread:
            chunk = [f for f in self.frames[1:] if f not in self.guides]
            self.out.log(f"process {self.ranks.rank} of {self.ranks.world}: " + (
                f"frames {chunk[0]} to {chunk[-1]}" if chunk else "no frames") + (
                " after frame 0" if self.ranks.leader else f", from frame 0's weights through {len(self.guides)} "
                                                           f"predicted frames"))
        latest, state = (load_newest_intact(self.checkpoint_home, self.device, self.backend, self.out.warn) if resume
                         else (None, None))
        if latest is None:
            if resume:
                self.out.warn("--resume: the job has no checkpoint yet; starting from the beginning")
            if self.ranks.leader:
                self.remove_old_sequence()
            elif len(self.frames) > 1:
                self.start_from_first_frame()
        else:
            self.restore_sequence(state, latest)   # the frame and its motion first: the optimiser holds it
            self.load_checkpoint(latest, state)
            where = f"frame {self.frame} ({self.phase})" if self.index < len(self.frames) else "the end of the sequence"
            self.out.log(f"resumed from {latest} at {where}, step {self.step}")
            if self.index > 0 and self.ranks.shared_threads:  # frame 0 is done: the others train too
                spread.use_threads(self.ranks.shared_threads, self.backend)
        self.emit_train_stage()
        while self.index < len(self.frames):
            self.train_frame()
        sequence = self.write_sequence(finished=True)
        if self.ranks.spread and self.ranks.leader:
            self.wait_for_the_other_ranks()
        return {"sequence": sequence, "meshes": os.path.dirname(sequence),
                "frames": len(self.all_frames) - len(self.missing_frames())}

    def start_from_first_frame(self):
        """A rank after 0: wait for frame 0's weights (rank 0 publishes them), then start at the first
        frame after it, placed relative to frame 0."""
        path = spread.first_frame_path(self.job_dir)
        self.out.log(f"waiting for frame {self.frames[0]}'s weights ({path})")
        spread.wait_until(lambda: os.path.exists(path), self.stop_if_cancelled)
        state = load_checkpoint(path, self.device, self.backend)
        self.load_checkpoint(path, state)
        self.index, self.phase, self.entries = 1, "predict", []
        self.previous = self.relative = (np.eye(3), np.zeros(3))
        self.load_frame(1)
        self.frame_clock = time.monotonic()

    def wait_for_the_other_ranks(self):
        """Rank 0 at the end of its chunk: rewrite sequence.json as the other ranks' frames come, until
        every rank is done (progress: the job's frames listed)."""
        total, last = len(self.all_frames), None
        def done():
            nonlocal last
            listed = total - len(self.missing_frames())
            if listed != last:
                last = listed
                self.write_sequence()
                self.out.emit(protocol.PROGRESS, iteration=listed, total=total, loss=None, psnr=None,
                              frame=None, phase="wait", sequence_progress=round(listed / total, 5))
            return spread.all_finished(self.job_dir, self.ranks.world)
        spread.wait_until(done, self.stop_if_cancelled)
        self.write_sequence()

    def train_frame(self):
        """Train the frame in hand (from wherever a resumed checkpoint left it) and write its mesh; a
        guide frame only gets its motion."""
        index = self.index
        guide = self.frame in self.guides
        self.out.emit(protocol.STAGE, name="frame", frame=self.frame, index=index, count=len(self.frames))
        loss = None
        if self.phase == "predict":
            if self.prediction_steps():
                loss = self.predict_motion()
            else:
                self.rotation, self.translation = self.previous
            self.phase = "train"
            if not guide:
                self.make_optimizer()  # the frame trains like a new job (NeuS2), its motion with the network
                self.update_region()
                self.out.emit(protocol.STAGE, name="train", frame=self.frame)
        end = self.frame_begin(index + 1)
        if self.step < end:
            self.train_until(end, begin=self.frame_begin(index), report=self.report)
            loss = self.last_loss
        self.settle_transform()
        if not guide:
            self.finish_frame(loss if loss is not None else float("nan"))
        # The next frame starts from here: this frame's transform and weights, checkpointed.
        self.previous, self.index, self.phase = (self.rotation, self.translation), index + 1, "predict"
        self.frame_clock = time.monotonic()
        if not guide:
            if index == 0 and self.ranks.spread:  # the other ranks start from here (before the checkpoint
                write_state(spread.first_frame_path(self.job_dir), self.checkpoint_state())  # that skips it)
                if self.ranks.shared_threads:  # ... and take their share of this machine's cores
                    spread.use_threads(self.ranks.shared_threads, self.backend)
                    self.out.log(f"{self.ranks.shared_threads} CPU threads from here (the other processes start)")
            self.save_checkpoint()
        if self.index < len(self.frames):
            self.load_frame(self.index)
