"""Multi-resolution hash encoding (instant-ngp), torch reference backend.

Level l has resolution N_l = floor(base * b**l) with b chosen so the last level reaches `finest`.
A point u in [0,1]^3 sits at u * N_l in level l's lattice; its 8 surrounding vertices are looked up
in that level's table (directly when (N_l+1)^3 fits in the table, else through the spatial hash
xor(x*1, y*2654435761, z*805459861) mod T) and blended trilinearly. Inactive levels (progressive
training) output zeros.
"""
import math
from dataclasses import dataclass

import torch

PRIMES = (1, 2654435761, 805459861)


@dataclass
class HashGridConfig:
    levels: int = 16
    features: int = 2
    log2_table: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048


def level_resolutions(cfg):
    if cfg.levels == 1:
        return [cfg.base_resolution]
    growth = math.exp((math.log(cfg.finest_resolution) - math.log(cfg.base_resolution)) / (cfg.levels - 1))
    return [int(math.floor(cfg.base_resolution * growth ** level)) for level in range(cfg.levels)]


class HashGrid(torch.nn.Module):
    """Encodes points of [0,1]^3 into levels * features values."""

    def __init__(self, cfg: HashGridConfig):
        super().__init__()
        self.cfg = cfg
        self.table_size = 2 ** cfg.log2_table
        self.resolutions = level_resolutions(cfg)
        rows = [min(self.table_size, (r + 1) ** 3) for r in self.resolutions]
        self.register_buffer("row_offsets", torch.tensor([0] + rows[:-1], dtype=torch.int64).cumsum(0),
                             persistent=False)
        # One flat table for all levels; instant-ngp's U(-1e-4, 1e-4) initialisation.
        self.table = torch.nn.Parameter(torch.empty(sum(rows), cfg.features).uniform_(-1e-4, 1e-4))
        self.register_buffer("resolution_t", torch.tensor(self.resolutions, dtype=torch.float32),
                             persistent=False)
        dense = [(r + 1) ** 3 <= self.table_size for r in self.resolutions]
        assert dense == sorted(dense, reverse=True), "dense levels must precede hashed ones"
        self.dense_levels = sum(dense)
        self.register_buffer("side", torch.tensor([r + 1 for r in self.resolutions], dtype=torch.int64),
                             persistent=False)
        self.register_buffer("level_mask", torch.ones(cfg.levels), persistent=False)
        self.output_dim = cfg.levels * cfg.features

    @property
    def active_levels(self):
        return int(self.level_mask.sum().item())

    def set_active_levels(self, count):
        count = max(1, min(self.cfg.levels, int(count)))
        self.level_mask.zero_()
        self.level_mask[:count] = 1.0

    def cell_size(self, level):
        """Edge of a lattice cell at `level`, in the [0,1] units the grid is fed."""
        return 1.0 / self.resolutions[level]

    def forward(self, u):
        """u: (N, 3) in [0, 1] -> (N, levels * features)."""
        n, levels = u.shape[0], self.cfg.levels
        # Points outside the unit cube take the value on its boundary (numerical-gradient taps may
        # step just outside); the last cell of each level is closed on both sides.
        pos = u.clamp(0.0, 1.0)[:, None, :] * self.resolution_t[None, :, None]   # (N, L, 3)
        floor = torch.minimum(torch.floor(pos), self.resolution_t[None, :, None] - 1)
        frac = pos - floor
        lo = floor.long()
        lo_hi = torch.stack([lo, lo + 1], -1)                              # (N, L, 3, 2)
        # Row of each of the 8 corners, built by broadcasting the per-axis pairs (corner order z, y, x)
        # so that no (N, L, 8, 3) temporary is made. Dense levels come first (resolution grows).
        rows = []
        if self.dense_levels:
            c = lo_hi[:, :self.dense_levels]
            side = self.side[:self.dense_levels].view(1, -1, 1, 1, 1)
            x, y, z = c[:, :, 0, None, None, :], c[:, :, 1, None, :, None], c[:, :, 2, :, None, None]
            rows.append((x + side * (y + side * z)).reshape(n, self.dense_levels, 8))
        if self.dense_levels < levels:
            c = lo_hi[:, self.dense_levels:]
            hx = (c[:, :, 0] * PRIMES[0])[:, :, None, None, :]
            hy = (c[:, :, 1] * PRIMES[1])[:, :, None, :, None]
            hz = (c[:, :, 2] * PRIMES[2])[:, :, :, None, None]
            rows.append(((hx ^ hy ^ hz) & (self.table_size - 1)).reshape(n, levels - self.dense_levels, 8))
        rows = torch.cat(rows, 1) + self.row_offsets.view(1, levels, 1)
        w = torch.stack([1 - frac, frac], -1)                              # (N, L, 3, 2)
        weights = (w[:, :, 0, None, None, :] * w[:, :, 1, None, :, None] * w[:, :, 2, :, None, None])
        weights = weights.reshape(n * levels, 1, 8) * self.level_mask.repeat(n).view(n * levels, 1, 1)
        # int64 rows: on the CPU an int32 gather made the backward scatter several times slower.
        values = self.table.index_select(0, rows.reshape(-1)).view(n * levels, 8, self.cfg.features)
        return torch.bmm(weights, values).view(n, self.output_dim)


def reference_encode(grid, u):
    """Naive per-point, per-level, per-corner evaluation of `grid` (for tests)."""
    out = torch.zeros(u.shape[0], grid.output_dim, dtype=grid.table.dtype)
    F = grid.cfg.features
    for p in range(u.shape[0]):
        for level, res in enumerate(grid.resolutions):
            if grid.level_mask[level] == 0:
                continue
            x = [float(u[p, a]) * res for a in range(3)]
            x0 = [min(math.floor(v), res - 1) for v in x]  # the last cell is closed
            acc = torch.zeros(F, dtype=grid.table.dtype)
            for dx in (0, 1):
                for dy in (0, 1):
                    for dz in (0, 1):
                        c = (x0[0] + dx, x0[1] + dy, x0[2] + dz)
                        weight = 1.0
                        for a, d in enumerate((dx, dy, dz)):
                            f = x[a] - x0[a]
                            weight *= f if d else 1 - f
                        if (res + 1) ** 3 <= grid.table_size:
                            row = c[0] + (res + 1) * (c[1] + (res + 1) * c[2])
                        else:
                            row = ((c[0] * PRIMES[0]) ^ (c[1] * PRIMES[1]) ^ (c[2] * PRIMES[2])) % grid.table_size
                        acc += weight * grid.table[int(grid.row_offsets[level]) + row]
            out[p, level * F:(level + 1) * F] = acc
    return out
