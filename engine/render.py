"""NeuS volume rendering with empty-space skipping by an occupancy grid (NeuS2).

Rays are clipped to the unit sphere and sampled at fixed steps; only samples in occupied cells are
evaluated by the networks. Everything runs in the normalised space.
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
    root = disc.clamp_min(0).sqrt()
    near = (-b - root).clamp_min(0.0)
    far = -b + root
    return near, far, hit & (far > near)


def neus_alpha(sdf, cos, step, inv_s, cos_anneal):
    """NeuS's unbiased opacity of a segment of length `step` around a sample (Wang et al. 2021, eq. 13),
    with the cosine annealed from 'always decreasing' to the true one."""
    iter_cos = -(torch.relu(-cos * 0.5 + 0.5) * (1.0 - cos_anneal) + torch.relu(-cos) * cos_anneal)
    prev_cdf = torch.sigmoid((sdf - iter_cos * step * 0.5) * inv_s)
    next_cdf = torch.sigmoid((sdf + iter_cos * step * 0.5) * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


def _inference_samples(model, x, d, step, inv_s, cos_anneal, eps):
    """Rendering without gradients: the SDF everywhere, but normals (6 more taps) and colour only
    where the logistic density is not saturated. Elsewhere NeuS's opacity is 0 outside the surface
    and 1 inside it whatever the normal, and the colour there carries no weight."""
    sdf = model.sdf(x)[0]
    near = (sdf.abs() < 12.0 / inv_s + step).nonzero().squeeze(1)
    alpha = (sdf < 0).to(sdf.dtype)
    grad = torch.zeros_like(x)
    rgb = torch.zeros_like(x)
    if near.numel():
        s, g, feat, _ = model.sdf.with_gradient(x[near], eps)
        normals = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        rgb[near] = model.color(feat, normals, d[near])
        alpha[near] = neus_alpha(s, (d[near] * g).sum(-1), step[near], inv_s, cos_anneal)
        grad[near] = g
    return sdf, grad, rgb, alpha, None


def render_rays(model, grid, origins, dirs, samples, cos_anneal, eps, gradient="numerical",
                curvature=False, jitter=True, generator=None, background=0.0):
    """Colour, opacity and per-sample terms of a batch of rays.

    Returns a dict: rgb (R, 3) composited over the background (the model's background NeRF when it
    has one, else the constant grey `background`), opacity (R,) of the surface alone, grad (M, 3) and
    laplacian (M,) or None at the M evaluated samples, and `evaluated` (M).
    """
    rays, device = origins.shape[0], origins.device
    near, far, hit = sphere_chord(origins, dirs)
    step = torch.where(hit, (far - near) / samples, torch.zeros_like(near))
    # The generator lives on the CPU so that runs are reproducible on any device.
    offset = (torch.rand(rays, samples, generator=generator).to(device) if jitter
              else torch.full((rays, samples), 0.5, device=device))
    t = near[:, None] + (torch.arange(samples, dtype=torch.float32, device=device)[None] + offset) * step[:, None]
    points = origins[:, None, :] + t[..., None] * dirs[:, None, :]
    keep = grid.lookup(points) & hit[:, None]
    flat = keep.reshape(-1).nonzero().squeeze(1)
    ray_of = flat // samples
    x = points.reshape(-1, 3)[flat]
    d = dirs[ray_of]
    inv_s = model.sharpness()
    if torch.is_grad_enabled():
        sdf, grad, feat, lap = model.sdf.with_gradient(x, eps, gradient, curvature)
        normals = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        rgb = model.color(feat, normals, d)
        alpha = neus_alpha(sdf, (d * grad).sum(-1), step[ray_of], inv_s, cos_anneal)
    else:
        sdf, grad, rgb, alpha, lap = _inference_samples(model, x, d, step[ray_of], inv_s, cos_anneal, eps)
    alpha_full = torch.zeros(rays * samples, dtype=alpha.dtype, device=device).index_put((flat,), alpha)
    alpha_full = alpha_full.view(rays, samples)
    transmittance = torch.cumprod(torch.cat([torch.ones(rays, 1, device=device), 1.0 - alpha_full + 1e-7], 1),
                                  1)[:, :-1]
    weights = (alpha_full * transmittance).reshape(-1)[flat]
    color = torch.zeros(rays, 3, device=device).index_add(0, ray_of, weights[:, None] * rgb)
    opacity = torch.zeros(rays, device=device).index_add(0, ray_of, weights)
    if getattr(model, "background", None) is not None:
        # Beyond the sphere (or, for rays that miss it, beyond their closest approach to the centre).
        t_start = torch.where(hit, far, (-(origins * dirs).sum(-1)).clamp_min(0.0))
        behind = model.background(origins, dirs, t_start, jitter, generator)
    else:
        behind = torch.full_like(color, float(background))
    color = color + (1.0 - opacity[:, None]) * behind
    return {"rgb": color, "opacity": opacity, "grad": grad, "laplacian": lap, "evaluated": flat.numel()}
