"""NeuS volume rendering of the SDF, with two ways to place samples along the rays:

- "occupancy" (NeuS2): fixed steps along the ray's chord through the unit sphere; only samples in
  cells of an occupancy grid (updated during training) are evaluated by the networks.
- "hierarchical" (NeuS): coarse uniform samples, then importance samples drawn in a few rounds from
  the NeuS weights of the samples so far, at a sharpness that doubles each round.

Rays are clipped to the unit sphere (and to the region cells: the visual hull when there are masks).
Everything runs in the normalised space.
"""
import math

import torch


class OccupancyGrid:
    """Cells of [-1, 1]^3 that may hold surface: `region` (fixed: inside the unit sphere and, with
    masks, the dilated visual hull) and `occupied` (region cells whose SDF is within a band)."""

    def __init__(self, resolution, region=None, device="cpu"):
        self.resolution = resolution
        self.device = device
        centers = self.cell_centers()
        in_sphere = centers.norm(dim=-1) <= 1.0 + math.sqrt(3) / resolution
        self.region = in_sphere if region is None else (in_sphere & region.reshape(-1).to(self.device))
        self.occupied = self.region.clone()

    @property
    def cell_size(self):
        return 2.0 / self.resolution

    def cell_centers(self):
        axis = (torch.arange(self.resolution, dtype=torch.float32, device=self.device) + 0.5) * self.cell_size - 1.0
        return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)

    def index(self, points):
        cell = ((points + 1.0) / self.cell_size).floor().long().clamp(0, self.resolution - 1)
        return (cell[..., 0] * self.resolution + cell[..., 1]) * self.resolution + cell[..., 2]

    def lookup(self, points, grid=None):
        return (self.occupied if grid is None else grid)[self.index(points)]

    @torch.no_grad()
    def update(self, sdf_fn, inv_s, chunk=65536):
        """Mark region cells whose centre SDF is within a band that covers where NeuS weights live."""
        centers = self.cell_centers()[self.region]
        sdf = torch.cat([sdf_fn(c) for c in centers.split(chunk)])
        band = 0.5 * math.sqrt(3) * self.cell_size + max(2.0 * self.cell_size, 4.0 / float(inv_s))
        occupied = torch.zeros_like(self.region)
        occupied[self.region] = sdf.abs() < band
        self.occupied = occupied
        return int(occupied.sum())

    def state_dict(self):
        return {"resolution": self.resolution, "region": self.region, "occupied": self.occupied}

    def load_state_dict(self, state):
        self.resolution = state["resolution"]
        self.region, self.occupied = state["region"].to(self.device), state["occupied"].to(self.device)


def sphere_chord(origins, dirs, radius=1.0):
    """near, far of each ray's intersection with the sphere, and which rays hit it."""
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    hit = disc > 0
    # Not sqrt(clamp(disc)): its gradient at 0 is infinite, and 0 * inf is NaN for the rays that miss
    # when the rays themselves are optimised (a dynamic frame's motion).
    root = torch.where(hit, disc, torch.ones_like(disc)).sqrt()
    near = (-b - root).clamp_min(0.0)
    far = -b + root
    return near, far, hit & (far > near)


def annealed_cos(cos, cos_anneal):
    """NeuS's cosine, annealed from 'always decreasing' (-0.5 at a grazing angle) to the true one."""
    return -(torch.relu(-cos * 0.5 + 0.5) * (1.0 - cos_anneal) + torch.relu(-cos) * cos_anneal)


def neus_alpha(sdf, cos, step, inv_s, cos_anneal):
    """NeuS's unbiased opacity of a segment of length `step` around a sample (Wang et al. 2021, eq. 13),
    with the cosine annealed from 'always decreasing' to the true one."""
    iter_cos = annealed_cos(cos, cos_anneal)
    prev_cdf = torch.sigmoid((sdf - iter_cos * step * 0.5) * inv_s)
    next_cdf = torch.sigmoid((sdf + iter_cos * step * 0.5) * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


def sdf_values(model, x):
    """The SDF alone at x: SDFNetwork.value (one fused kernel with the Triton backend, outside autograd)
    where the model has it, else the network's first output."""
    value = getattr(model.sdf, "value", None)
    return value(x) if value is not None else model.sdf(x)[0]


def sample_colors(model, features, normals, dirs, views=None):
    """The colour network at samples; `views`: each sample's training view (for the appearance
    embedding), or None: the mean appearance (and models whose colour takes no view index)."""
    if views is None:
        return model.color(features, normals, dirs)
    return model.color(features, normals, dirs, views)


def _inference_samples(model, x, d, step, inv_s, cos_anneal, eps, sdf=None, views=None, taps=6):
    """Rendering without gradients: the SDF everywhere, but normals (6 more taps) and colour only
    where the logistic density is not saturated. Elsewhere NeuS's opacity is 0 outside the surface
    and 1 inside it whatever the normal, and the colour there carries no weight. `sdf`: the values
    at x when the caller has them already (early termination looked them up); `views`: each
    sample's training view, or None."""
    if sdf is None:
        sdf = sdf_values(model, x)
    near = (sdf.abs() < 12.0 / inv_s + step).nonzero().squeeze(1)
    alpha = (sdf < 0).to(sdf.dtype)
    grad = torch.zeros_like(x)
    rgb = torch.zeros_like(x)
    if near.numel():
        s, g, feat, _ = model.sdf.with_gradient(x[near], eps, taps=taps)
        normals = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        rgb[near] = sample_colors(model, feat, normals, d[near], None if views is None else views[near])
        alpha[near] = neus_alpha(s, (d[near] * g).sum(-1), step[near], inv_s, cos_anneal)
        grad[near] = g
    return sdf, grad, rgb, alpha, None


# The steepest descent of the SDF along a ray that the opacity estimate for skipping allows: the
# gradient's norm stays near 1 under the eikonal loss, 2 leaves room for a field still settling.
SKIP_MAX_SLOPE = 2.0
# The widest a sample's segment may look to the termination estimate, in units of the logistic
# density's scale 1/s: a sample's own opacity estimate then stays below 1 - exp(-2 * this) unless
# its SDF value alone says it lies deep inside, so no single misjudged cosine can end a ray.
TERMINATION_HALF_WIDTH = 0.5


@torch.no_grad()
def marching_keep(sdf, flat, t, step, inv_s, cos_anneal, early_stop, skip_alpha=0.0):
    """Which candidate samples still matter, judged from their SDF values alone (early termination).

    `sdf` (M,): the SDF at the candidates `flat` (indices into the (R, S) samples at distances `t`,
    in ray order), `step` (R, S) their segment lengths. Returns a boolean mask over the candidates.

    A ray ends after the first sample where its estimated transmittance falls below `early_stop` (that
    sample is kept: it is the one that makes the ray opaque). The estimate must not overrate opacity,
    because a sample dropped too early loses what lies behind it, whereas one kept too long only costs
    time. So each sample's NeuS opacity is taken with its cosine from the SDF's differences to its
    neighbours on the ray: the less steep of the two, no steeper than -1 (a true SDF's slope; steeper
    is a wiggle between samples), none at all (cosine 1) unless both neighbours are candidates, and
    the segment's half-width times that cosine capped at TERMINATION_HALF_WIDTH / s: at a high
    sharpness the numerical gradient at a sample can disagree with the slope between samples, and the
    true opacity then comes a sample later. Deep inside (SDF < -15 / s or so) NeuS's opacity is 1
    whatever the normal, so rays still end within a few samples of the surface.

    With `skip_alpha` > 0, samples whose opacity stays below it even at the steepest plausible slope
    (SKIP_MAX_SLOPE) are dropped too.
    """
    count = t.shape[1]
    # Everything runs on the candidate list (sorted by ray, then along it), not on all R x S samples.
    # Candidate i + 1 is candidate i's neighbour on the ray when their flat indices follow each other
    # within one row; elsewhere the slope is not-a-number, which maximum() propagates.
    t_of = t.reshape(-1)[flat]
    adjacent = (flat[1:] == flat[:-1] + 1) & (flat[1:] % count != 0)
    slope = (sdf[1:] - sdf[:-1]) / (t_of[1:] - t_of[:-1]).clamp_min(1e-8)
    slope = torch.where(adjacent, slope, torch.full_like(slope, float("nan")))
    gap = sdf.new_full((1,), float("nan"))
    cos = torch.maximum(torch.cat([slope, gap]), torch.cat([gap, slope]))
    seg = step.reshape(-1)[flat]
    iter_cos = annealed_cos(cos.nan_to_num(1.0).clamp(-1.0, 1.0), cos_anneal)
    iter_cos = torch.maximum(iter_cos, -2.0 * TERMINATION_HALF_WIDTH / (seg * inv_s).clamp_min(1e-12))
    alpha = neus_alpha(sdf, iter_cos, seg, inv_s, 1.0)  # annealing 1 passes a cosine <= 0 through as it is
    # Transmittance in front of each candidate: the running sum of log(1 - alpha) over the ray's
    # candidates before it (non-candidates are transparent): one cumulative sum over the whole list
    # (float64: it runs over all rays) minus its value where the ray's candidates begin.
    log_clear = torch.log1p(-alpha.clamp(max=1.0 - 1e-7)).double()
    before = log_clear.cumsum(0) - log_clear
    ray = flat // count
    index = torch.arange(len(flat), device=flat.device)
    starts = torch.where(torch.cat([ray.new_ones(1, dtype=torch.bool), ray[1:] != ray[:-1]]), index, 0)
    in_front = before - before[torch.cummax(starts, 0).values]
    keep = in_front >= math.log(early_stop) if early_stop > 0 else torch.ones_like(sdf, dtype=torch.bool)
    if skip_alpha > 0:
        steepest = neus_alpha(sdf, torch.full_like(sdf, -SKIP_MAX_SLOPE), seg, inv_s, cos_anneal)
        keep &= steepest >= skip_alpha
    return keep


def sample_pdf(bins, weights, count, jitter=False, generator=None):
    """`count` distances per ray drawn from the piecewise-constant density `weights` (R, B-1) over
    the intervals between `bins` (R, B), by inverting its CDF (stratified, or midpoints)."""
    rays = bins.shape[0]
    pdf = (weights + 1e-5) / (weights + 1e-5).sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros(rays, 1, device=bins.device), pdf.cumsum(-1)], -1).clamp(max=1.0)
    u = (torch.rand(rays, count, generator=generator).to(bins.device) if jitter
         else torch.full((rays, count), 0.5, device=bins.device))
    u = (torch.arange(count, dtype=torch.float32, device=bins.device)[None] + u) / count
    upper = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True).clamp(1, bins.shape[1] - 1)
    lower = upper - 1
    cdf_lo, cdf_hi = cdf.gather(1, lower), cdf.gather(1, upper)
    bin_lo, bin_hi = bins.gather(1, lower), bins.gather(1, upper)
    frac = ((u - cdf_lo) / (cdf_hi - cdf_lo).clamp_min(1e-8)).clamp(0.0, 1.0)
    return bin_lo + frac * (bin_hi - bin_lo)


def segment_weights(sdf, t, inv_s):
    """NeuS weights of the segments between consecutive samples (R, S-1) from SDF values alone
    (the up-sampling estimate of NeuS: the slope from neighbouring samples, never positive)."""
    mid = (sdf[:, 1:] + sdf[:, :-1]) * 0.5
    length = t[:, 1:] - t[:, :-1]
    slope = (sdf[:, 1:] - sdf[:, :-1]) / (length + 1e-5)
    slope = torch.minimum(slope, torch.cat([torch.zeros_like(slope[:, :1]), slope[:, :-1]], 1)).clamp(-1e3, 0.0)
    prev_cdf = torch.sigmoid((mid - slope * length * 0.5) * inv_s)
    next_cdf = torch.sigmoid((mid + slope * length * 0.5) * inv_s)
    alpha = ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-7], 1), 1)[:, :-1]
    return alpha * transmittance


@torch.no_grad()
def hierarchical_samples(sdf_fn, origins, dirs, near, far, coarse, fine, rounds, jitter=True, generator=None):
    """Sorted sample distances (R, coarse + fine): `coarse` uniform ones in [near, far], then `fine`
    ones drawn in `rounds` rounds from the NeuS weights at sharpness 64 * 2^round (NeuS's up-sampling)."""
    rays, device = origins.shape[0], origins.device
    u = (torch.rand(rays, coarse, generator=generator).to(device) if jitter
         else torch.full((rays, coarse), 0.5, device=device))
    t = near[:, None] + (torch.arange(coarse, dtype=torch.float32, device=device)[None] + u) / coarse \
        * (far - near)[:, None]

    def sdf_at(distances):
        points = origins[:, None, :] + distances[..., None] * dirs[:, None, :]
        return sdf_fn(points.reshape(-1, 3)).view(rays, -1)

    sdf = sdf_at(t)
    per_round = [fine // rounds + (1 if r < fine % rounds else 0) for r in range(rounds)]
    last = max((r for r, count in enumerate(per_round) if count), default=-1)
    for r, count in enumerate(per_round):
        if count == 0:
            continue
        new_t = sample_pdf(t, segment_weights(sdf, t, 64.0 * 2 ** r), count)
        t, order = torch.sort(torch.cat([t, new_t], 1), 1)
        if r < last:  # the last round's samples are placed, not weighed: their SDF is the caller's to evaluate
            sdf = torch.cat([sdf, sdf_at(new_t)], 1).gather(1, order)
    return t


def render_rays(model, grid, origins, dirs, samples, cos_anneal, eps, gradient="numerical",
                curvature=False, jitter=True, generator=None, background=0.0, sampler="occupancy",
                fine_samples=64, up_sample_rounds=4, early_stop=0.0, skip_alpha=0.0, views=None, taps=6,
                world_rays=None):
    """Colour, opacity and per-sample terms of a batch of rays.

    sampler "occupancy": `samples` fixed steps per ray, evaluated where the grid is occupied; with
    `early_stop` > 0 the SDF alone is looked up there first and only the samples marching_keep keeps
    (up to where the ray's estimated transmittance falls below early_stop; with `skip_alpha`, not those
    of negligible opacity) are evaluated with normals and colour. "hierarchical": `samples` coarse plus
    `fine_samples` importance samples, evaluated in the grid's region. Returns a dict: rgb (R, 3)
    composited over the background (the model's background NeRF when it has one, else the constant
    grey `background`), opacity (R,) of the surface alone, grad (M, 3) and laplacian (M,) or None at the
    M evaluated samples, `evaluated` (M) and `candidates` (samples in occupied cells, M or more).
    `views` (R,): each ray's training view, for the colour network's appearance embedding; None (a
    view that is not a training view): the mean appearance. `taps`: the numerical gradient's (6 or 4).
    `world_rays`: (origins, directions) of the same rays where the background lives, when the rays given
    are moved into the object's frame (a dynamic frame's motion): the background NeRF sees the world,
    which does not move with the object. None: the rays given.
    """
    rays, device = origins.shape[0], origins.device
    near, far, hit = sphere_chord(origins, dirs)
    if sampler == "hierarchical":
        far = torch.where(hit, far, near + 1e-3)  # rays that miss keep well-formed (unused) samples
        t = hierarchical_samples(lambda p: model.sdf(p)[0], origins, dirs, near, far, samples, fine_samples,
                                 up_sample_rounds, jitter, generator)
        # Each sample stands for the segment up to the next one (the last: up to the chord's end).
        step = torch.cat([t[:, 1:] - t[:, :-1], (far[:, None] - t[:, -1:]).clamp_min(0.0)], 1)
        t = t + step * 0.5
        occupied = grid.region
    elif sampler == "occupancy":
        chord_step = torch.where(hit, (far - near) / samples, torch.zeros_like(near))
        # One random offset per ray shifts all its evenly spaced samples (NeuS, instant-ngp), so that each
        # sample's segment is what the constant step says. The generator lives on the CPU so that runs
        # are reproducible on any device.
        offset = (torch.rand(rays, 1, generator=generator).to(device) if jitter
                  else torch.full((rays, 1), 0.5, device=device))
        t = near[:, None] + (torch.arange(samples, dtype=torch.float32, device=device)[None] + offset) \
            * chord_step[:, None]
        step = chord_step[:, None].expand_as(t)
        occupied = None
    else:
        raise ValueError(f"unknown sampler {sampler!r}: occupancy or hierarchical")
    count = t.shape[1]
    points = origins[:, None, :] + t[..., None] * dirs[:, None, :]
    keep = grid.lookup(points, occupied) & hit[:, None]
    flat = keep.reshape(-1).nonzero().squeeze(1)
    candidates = flat.numel()
    inv_s = model.sharpness()
    sdf = None
    if sampler == "occupancy" and (early_stop > 0 or skip_alpha > 0) and candidates:
        # One SDF tap per candidate (no normals, no colour, no backward) decides which samples
        # are worth the full evaluation: 7 taps, the colour MLP and, in training, their backward.
        with torch.no_grad():
            sdf = sdf_values(model, points.reshape(-1, 3)[flat])
            keep_sample = marching_keep(sdf, flat, t, step, inv_s.detach(), cos_anneal, early_stop, skip_alpha)
        flat, sdf = flat[keep_sample], sdf[keep_sample]
    ray_of = flat // count
    x = points.reshape(-1, 3)[flat]
    d = dirs[ray_of]
    seg = step.reshape(-1)[flat]
    sample_views = None if views is None else views[ray_of]
    if torch.is_grad_enabled():
        sdf, grad, feat, lap = model.sdf.with_gradient(x, eps, gradient, curvature, taps)
        normals = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        rgb = sample_colors(model, feat, normals, d, sample_views)
        alpha = neus_alpha(sdf, (d * grad).sum(-1), seg, inv_s, cos_anneal)
    else:
        sdf, grad, rgb, alpha, lap = _inference_samples(model, x, d, seg, inv_s, cos_anneal, eps, sdf, sample_views,
                                                        taps)
    alpha_full = torch.zeros(rays * count, dtype=alpha.dtype, device=device).index_put((flat,), alpha)
    alpha_full = alpha_full.view(rays, count)
    transmittance = torch.cumprod(torch.cat([torch.ones(rays, 1, device=device), 1.0 - alpha_full + 1e-7], 1),
                                  1)[:, :-1]
    weights = (alpha_full * transmittance).reshape(-1)[flat]
    color = torch.zeros(rays, 3, device=device).index_add(0, ray_of, weights[:, None] * rgb)
    opacity = torch.zeros(rays, device=device).index_add(0, ray_of, weights)
    if getattr(model, "background", None) is not None:
        # Beyond the sphere (or, for rays that miss it, beyond their closest approach to the centre):
        # distances along a ray are the same in both frames (the motion is rigid).
        t_start = torch.where(hit, far, (-(origins * dirs).sum(-1)).clamp_min(0.0))
        world_origins, world_dirs = (origins, dirs) if world_rays is None else world_rays
        behind = model.background(world_origins, world_dirs, t_start, jitter, generator)
    else:
        behind = torch.full_like(color, float(background))
    color = color + (1.0 - opacity[:, None]) * behind
    return {"rgb": color, "opacity": opacity, "grad": grad, "laplacian": lap, "evaluated": flat.numel(),
            "candidates": candidates}
