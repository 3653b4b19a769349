"""Multi-resolution hash encoding (instant-ngp): one module, three backends (engine.nn.backends).

`torch` is the reference and runs everywhere; `triton` runs engine/nn/hashgrid_triton.py's fused kernels
on the same table on a GPU, `numba` engine/nn/hashgrid_numba.py's compiled kernels on the CPU (so a
checkpoint moves freely between the three); `tcnn` hands the encoding to
tiny-cuda-nn's HashGrid, which owns its own parameters and lattice alignment.

Level l has resolution N_l = floor(base * b**l) with b chosen so the last level reaches `finest` (exactly:
the floor forgives the rounding error of b**l, which would make 2048 come out as 2047).
A point u in [0,1]^3 sits at u * N_l in level l's lattice; its 8 surrounding vertices are looked up
in that level's table (directly when (N_l+1)^3 fits in the table, else through the spatial hash
xor(x*1, y*2654435761, z*805459861) mod T) and blended trilinearly. Inactive levels (progressive
training) output zeros.
"""
import contextlib
import math

import torch

from ..config import HashGridConfig

PRIMES = (1, 2654435761, 805459861)
# The central-difference taps, in the order the rows of encode_taps (and central_differences) follow.
TAP_OFFSETS = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
# Neuralangelo's 4 tetrahedral taps: the corners of a regular tetrahedron, at distance eps from the point
# (each coordinate +-eps/sqrt(3)); they sum to zero and their outer products to 4/3 I.
TETRAHEDRAL_OFFSETS = tuple(tuple(c / math.sqrt(3.0) for c in corner)
                            for corner in ((1, -1, -1), (-1, -1, 1), (-1, 1, -1), (1, 1, 1)))
OFFSETS = {6: TAP_OFFSETS, 4: TETRAHEDRAL_OFFSETS}


def level_resolutions(cfg):
    if cfg.levels == 1:
        return [cfg.base_resolution]
    growth = math.exp((math.log(cfg.finest_resolution) - math.log(cfg.base_resolution)) / (cfg.levels - 1))
    return [int(math.floor(cfg.base_resolution * growth ** level * (1.0 + 1e-9))) for level in range(cfg.levels)]


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
        self._active = cfg.levels
        self.backend = "torch"
        self.half_table = False
        self._reference_only = False   # set while a double backward needs the torch path
        self._layout = None            # the Triton kernels' view of this grid
        self._lookup_cache = (None, None)
        self.tcnn_encoding = None

    # -- backends ------------------------------------------------------------------------------
    def set_backend(self, name, half_table=False):
        """Run the encoding with `name` (torch | triton | tcnn; see engine.nn.backends), after the grid
        is on its device (numba: the CPU). half_table: Triton reads a float16 copy of the tables (refreshed whenever
        the optimiser changes them). tcnn replaces the table by tiny-cuda-nn's own parameters."""
        if name not in ("torch", "triton", "numba", "tcnn"):
            raise ValueError(f"unknown encoding backend {name!r}")
        self.backend, self.half_table = name, bool(half_table) and name == "triton"
        self._layout = None
        self._lookup_cache = (None, None)
        if name == "tcnn" and self.tcnn_encoding is None:
            self._build_tcnn()

    def _build_tcnn(self):
        import tinycudann
        cfg = self.cfg
        growth = math.exp((math.log(cfg.finest_resolution) - math.log(cfg.base_resolution)) / max(1, cfg.levels - 1))
        self.tcnn_encoding = tinycudann.Encoding(3, {
            "otype": "HashGrid", "n_levels": cfg.levels, "n_features_per_level": cfg.features,
            "log2_hashmap_size": cfg.log2_table, "base_resolution": cfg.base_resolution,
            "per_level_scale": growth, "interpolation": "Linear"}, dtype=torch.float32).to(self.table.device)
        # The optimiser and checkpoints hold tiny-cuda-nn's parameters alone.
        self.table = None

    def table_parameters(self):
        """The encoding's trainable tensors (for the optimiser's grid group)."""
        return list(self.tcnn_encoding.parameters()) if self.tcnn_encoding is not None else [self.table]

    @contextlib.contextmanager
    def reference(self):
        """Run the torch backend inside (twice-differentiable, for the analytic gradient mode)."""
        before, self._reference_only = self._reference_only, True
        try:
            yield
        finally:
            self._reference_only = before

    def _triton_lookup(self):
        """The table the kernels read: the parameter itself, or its float16 copy for this version."""
        if not self.half_table:
            return self.table.detach()
        key = (self.table.data_ptr(), self.table._version)
        if self._lookup_cache[0] != key:
            self._lookup_cache = (key, self.table.detach().half())
        return self._lookup_cache[1]

    def triton_layout(self):
        if self._layout is None:
            from .hashgrid_triton import GridLayout
            self._layout = GridLayout(self)
        return self._layout

    def uses_triton(self):
        return self.backend == "triton" and not self._reference_only

    def _triton(self, u, eps, taps):
        from .hashgrid_triton import encode
        return encode(u, self.table, self._triton_lookup(), self.triton_layout(), self.active_levels, eps, taps)

    @property
    def active_levels(self):
        return self._active

    def set_active_levels(self, count):
        count = max(1, min(self.cfg.levels, int(count)))
        if count != self._active:  # a Python copy of the count: reading the mask back would sync a GPU
            self.level_mask.zero_()
            self.level_mask[:count] = 1.0
            self._active = count

    def cell_size(self, level):
        """Edge of a lattice cell at `level`, in the [0,1] units the grid is fed."""
        return 1.0 / self.resolutions[level]

    def forward(self, u):
        """u: (N, 3) in [0, 1] -> (N, levels * features)."""
        if self.backend == "tcnn":
            return self._tcnn(u)
        if self.backend == "triton" and not self._reference_only:
            return self._triton(u, 0.0, 1)
        if self.backend == "numba" and not self._reference_only:
            return self._numba(u, torch.zeros(1, 3))
        return self.torch_forward(u)

    def _numba(self, u, offsets):
        from .hashgrid_numba import encode
        return encode(self, u, offsets)

    def encode_taps(self, u, eps, taps=6):
        """((taps + 1) N, levels * features): the encoding at u, then at its taps u + eps o for o in
        OFFSETS[taps] (6: TAP_OFFSETS, 4: TETRAHEDRAL_OFFSETS; eps in the grid's [0, 1] units), tap-major.
        Triton does the 6 axis taps in one launch of its own."""
        if taps == 6 and self.backend == "triton" and not self._reference_only:
            return self._triton(u, eps, 7)
        offsets = eps * torch.tensor(OFFSETS[taps], dtype=torch.float32)
        if self.backend == "numba" and not self._reference_only:  # the taps are made inside the kernel
            return self._numba(u, torch.cat([torch.zeros(1, 3), offsets]))
        points = u[None] + offsets.to(u)[:, None, :]
        return self(torch.cat([u, points.reshape(-1, 3)], 0))

    def _tcnn(self, u):
        # tiny-cuda-nn has no notion of progressive levels: inactive levels are masked out (zero
        # output, zero gradient), as the other backends do.
        out = self.tcnn_encoding(u.clamp(0.0, 1.0).contiguous()).float()
        return out * self.level_mask.repeat_interleave(self.cfg.features)[None]

    def torch_forward(self, u):
        """The reference implementation (differentiable to any order)."""
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
