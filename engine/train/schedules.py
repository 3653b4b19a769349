"""What changes with the step: the learning rate, the active hash-grid levels (NeuS2's progressive
training), Neuralangelo's numerical-gradient step and curvature weight, and the adaptive ray batch."""
MIN_RAYS = 64            # the adaptive batch never draws fewer rays (nor more than train.max_rays)
BATCH_SMOOTHING = 0.9    # weight of the past in the adaptive batch's samples per ray


def learning_rate_factor(step, cfg):
    """Linear warm-up, then exponential decay to final_lr_factor at the last step (cfg: TrainConfig)."""
    if step < cfg.warmup_iters:
        return (step + 1) / cfg.warmup_iters
    progress = (step - cfg.warmup_iters) / max(1, cfg.iterations - cfg.warmup_iters)
    return cfg.final_lr_factor ** min(1.0, progress)


def active_levels(step, cfg, levels):
    return min(levels, cfg.train.start_levels + step // max(1, cfg.train.level_every))


def numerical_step(step, cfg, resolutions):
    """Neuralangelo's step eps of the numerical gradient, in normalised units: the cell of the finest
    active level, so that it shrinks by the level growth factor each time a level opens (the official
    code's 1 / resolution of the finest active level)."""
    return 2.0 / resolutions[active_levels(step, cfg, len(resolutions)) - 1]


def level_growth(encoding):
    """The factor between consecutive levels' resolutions (before rounding)."""
    return (encoding.finest_resolution / encoding.base_resolution) ** (1.0 / max(1, encoding.levels - 1))


def curvature_schedule(step, cfg):
    """Neuralangelo's curvature weight factor: a linear warm-up over the first `level_every` steps, times
    eps over the coarsest level's cell: divided by the level growth factor for every step eps takes, so
    that it ends at 1 / (finest / base resolution) (1/64 for the quality preset) once every level is open."""
    tc, e = cfg.train, cfg.encoding
    warm = min(1.0, step / max(1, tc.level_every))
    return warm / level_growth(e) ** (active_levels(step, cfg, e.levels) - 1)


class AdaptiveBatch:
    """instant-nsr-pl's (and instant-ngp's) dynamic batch: the next step draws rays * target_samples
    / samples rays, so that every step evaluates about train.target_samples samples however many
    each ray gets (fewer as the occupancy grid tightens, early termination cuts the rays and the
    sharpness grows). The samples per ray are smoothed over steps (a batch's share of rays that hit
    the object varies), and the count stays within [MIN_RAYS, most()]. target_samples 0: a fixed
    batch of train.rays_per_batch."""

    def __init__(self, cfg):
        self.cfg = cfg                  # TrainConfig
        self.rays = cfg.rays_per_batch
        self.samples_per_ray = None     # smoothed evaluated samples per ray of the steps so far

    def most(self):
        """train.max_rays, or 8 x rays_per_batch when that is 0."""
        return self.cfg.max_rays if self.cfg.max_rays > 0 else 8 * self.cfg.rays_per_batch

    def update(self, rays, samples):
        target = self.cfg.target_samples
        if target <= 0:
            return
        per_ray = samples / max(rays, 1)
        self.samples_per_ray = (per_ray if self.samples_per_ray is None
                                else BATCH_SMOOTHING * self.samples_per_ray + (1.0 - BATCH_SMOOTHING) * per_ray)
        low = min(MIN_RAYS, self.cfg.rays_per_batch)
        self.rays = int(min(max(target / max(self.samples_per_ray, 1e-3), low), self.most()))

    def state(self):
        return {"rays": self.rays, "samples_per_ray": self.samples_per_ray}

    def restore(self, state):
        """From a checkpoint, so that a resumed run draws the batches an uninterrupted one would."""
        state = state or {}
        self.rays = int(state.get("rays", self.cfg.rays_per_batch))
        self.samples_per_ray = state.get("samples_per_ray")
