"""Global transformation prediction (NeuS2): a later frame's rigid motion relative to the previous
frame, optimised through the frozen network with every level open, which places the frame's rays in
the canonical space the network lives in. A mixin of engine.train.dynamic.SequenceTrainer: it uses the
trainer's frame data, transforms, render and events.
"""
import math
import time

import numpy as np
import torch

from ..io import protocol
from .motion import axis_angle_to_matrix, compose, matrix_to_axis_angle, to_canonical

# Global transformation prediction (MotionPrediction.predict_motion): Adam on the motion, its learning
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


class MotionPrediction:
    """predict_motion and its parts (see the module's docstring)."""

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
