"""The background of unmasked scenes: a small NeRF outside the unit sphere (NeRF++'s inverted
sphere, as NeuS and Neuralangelo use), so that what lies beyond the region does not have to be
explained by the SDF."""
import math

import torch
from torch import nn

from .precision import reduced_precision


def frequency_encoding(x, frequencies):
    """x and sin/cos of x * 2^k * pi for k < frequencies (NeRF's positional encoding)."""
    scaled = x[..., None, :] * (2.0 ** torch.arange(frequencies, dtype=x.dtype, device=x.device))[:, None] * math.pi
    return torch.cat([x, torch.sin(scaled).flatten(-2), torch.cos(scaled).flatten(-2)], -1)


def inverted_sphere_samples(origins, dirs, t_start, samples, jitter, generator=None):
    """Distances t along each ray (R, samples), beyond t_start, spaced uniformly in inverse distance
    from the origin: from |x(t_start)| out to 1000 units (the far background)."""
    rays, device = origins.shape[0], origins.device
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1)
    start = origins + t_start[:, None] * dirs
    inv_r0 = 1.0 / start.norm(dim=-1).clamp_min(1.0)
    u = (torch.rand(rays, samples, generator=generator).to(device) if jitter
         else torch.full((rays, samples), 0.5, device=device))
    steps = (torch.arange(samples, dtype=torch.float32, device=device)[None] + u) / samples
    inv_r = (inv_r0[:, None] * (1.0 - steps)).clamp_min(1e-3)
    r = 1.0 / inv_r
    # |o + t d| = r, taking the root beyond the ray's closest approach to the origin.
    t = -b[:, None] + (b[:, None] ** 2 - c[:, None] + r ** 2).clamp_min(0.0).sqrt()
    return torch.maximum(t, t_start[:, None])


class BackgroundNeRF(nn.Module):
    amp_dtype = None  # set by SDFModel.set_mixed_precision

    def __init__(self, hidden=64, frequencies=6, samples=32):
        super().__init__()
        self.frequencies, self.samples = frequencies, samples
        width = 4 * (1 + 2 * frequencies)
        self.density = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 1 + 15))
        self.color = nn.Sequential(nn.Linear(15 + 3, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, origins, dirs, t_start, jitter=True, generator=None):
        """RGB (R, 3) of the background seen along each ray from t_start on."""
        rays, n = origins.shape[0], self.samples
        t = inverted_sphere_samples(origins, dirs, t_start, n, jitter, generator)
        x = origins[:, None] + t[..., None] * dirs[:, None]
        r = x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        contracted = torch.cat([x / r, 1.0 / r], -1)                      # (R, n, 4) in the unit 4-ball
        with reduced_precision(self, x):
            h = self.density(frequency_encoding(contracted.reshape(-1, 4), self.frequencies))
            logits = self.color(torch.cat([h[:, 1:], dirs.repeat_interleave(n, 0)], -1))
        sigma = torch.nn.functional.softplus(h[:, 0].float()).view(rays, n)
        rgb = torch.sigmoid(logits.float()).view(rays, n, 3)
        delta = torch.cat([t[:, 1:] - t[:, :-1], torch.full((rays, 1), 1e10, device=t.device)], 1)
        alpha = 1.0 - torch.exp(-sigma * delta)
        transmittance = torch.cumprod(torch.cat([torch.ones(rays, 1, device=t.device), 1.0 - alpha + 1e-7], 1),
                                      1)[:, :-1]
        return ((alpha * transmittance)[..., None] * rgb).sum(1)
