"""CPU kernels for the multi-resolution hash encoding, compiled with Numba.

The same encoding as engine.nn.encoding.HashGrid.torch_forward (and engine/nn/hashgrid_triton.py on a
GPU), on the same table: points are clamped to [0, 1], the last cell of each level is closed, dense
levels index x + s (y + s z) with s = N_l + 1, hashed ones xor(x * 1, y * 2654435761, z * 805459861)
& (T - 1), plus the level's row offset; levels at or above the active count output zeros.

`encode(grid, u, offsets)` encodes every point at K positions u + offsets[k] in one call (the point
itself and its numerical-gradient taps), tap-major, without materialising the K * N positions.

Parallelism (race-free, no atomics):
- forward: over (tap, point) rows; each row writes only its own output.
- backward: over (level, point group) tasks. Levels own disjoint row ranges of the table, so a task
  scatters into the table gradient without racing any other level; when there are fewer active
  levels than threads the points are also split into groups, each with its own copy of the active
  rows, summed at the end. The positions' gradient is written per level and summed over levels.
  Level-major order also keeps one level's table (a few hundred KiB) hot in cache while a task runs.

Numba's on-disk cache (cache=True) goes to NUMBA_CACHE_DIR, by default XDG_CACHE_HOME (or ~/.cache)
/marble/numba, set below before numba is imported.
"""
import math
import os

import numpy as np
import torch

# Numba keeps compiled kernels on disk; by default beside this file (the installed extension's folder):
# the user's cache instead, unless NUMBA_CACHE_DIR says where (it is read when numba is imported).
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "marble", "numba"))

try:
    import numba
    from numba import njit, prange
except ImportError:  # the torch encoding still runs; available() says which
    numba = None

_PRIME_Y = 2654435761
_PRIME_Z = 805459861
# float32 constants: a Python float literal would promote the float32 arithmetic to float64.
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
# The group buffers' budget (bytes) when the backward splits points into groups.
_GROUP_BUFFER_BYTES = 256 * 2 ** 20


def available():
    """True when numba imports (the kernels compile on first use)."""
    return numba is not None


def use_threads(threads):
    """Run the kernels on `threads` threads (at most the pool numba started with): the engine's choice
    for torch, so that the processes of a job spread on one machine do not fight over its cores."""
    if numba is not None:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


if numba is not None:
    _JIT = dict(fastmath=True, cache=True, nogil=True)

    @njit(**_JIT)
    def _clamp01(v):
        return min(max(v, _ZERO), _ONE)

    # Inlined in Numba's IR: measured 10-25% faster than leaving the call to LLVM.
    @njit(inline="always", **_JIT)
    def _cell(x, y, z, res, side, base, dense, mask):
        """The 8 table rows (corner c: bit 0 x, bit 1 y, bit 2 z, torch_forward's order) of the cell
        holding (x, y, z) in [0, 1] at a level of resolution res, and the fractional position."""
        px = x * res
        py = y * res
        pz = z * res
        # The last cell is closed: a point on the far face stays in it.
        fx = min(np.floor(px), res - _ONE)
        fy = min(np.floor(py), res - _ONE)
        fz = min(np.floor(pz), res - _ONE)
        ix = np.int64(fx)
        iy = np.int64(fy)
        iz = np.int64(fz)
        if dense:
            r0 = base + ix + side * (iy + side * iz)
            sy = side
            sz = side * side
            rows = (r0, r0 + 1, r0 + sy, r0 + 1 + sy, r0 + sz, r0 + 1 + sz, r0 + sy + sz, r0 + 1 + sy + sz)
        else:
            x0 = ix
            x1 = ix + 1
            y0 = iy * _PRIME_Y
            y1 = (iy + 1) * _PRIME_Y
            z0 = iz * _PRIME_Z
            z1 = (iz + 1) * _PRIME_Z
            rows = (base + ((x0 ^ y0 ^ z0) & mask), base + ((x1 ^ y0 ^ z0) & mask),
                    base + ((x0 ^ y1 ^ z0) & mask), base + ((x1 ^ y1 ^ z0) & mask),
                    base + ((x0 ^ y0 ^ z1) & mask), base + ((x1 ^ y0 ^ z1) & mask),
                    base + ((x0 ^ y1 ^ z1) & mask), base + ((x1 ^ y1 ^ z1) & mask))
        return rows, px - fx, py - fy, pz - fz

    @njit(parallel=True, **_JIT)
    def _forward(u, offsets, table, res, side, base, n_dense, mask, active, out):
        n = u.shape[0]
        taps = offsets.shape[0]
        levels = res.shape[0]
        F = table.shape[1]
        for job in prange(taps * n):
            k = job // n
            p = job - k * n
            x = _clamp01(u[p, 0] + offsets[k, 0])
            y = _clamp01(u[p, 1] + offsets[k, 1])
            z = _clamp01(u[p, 2] + offsets[k, 2])
            for level in range(active):
                rows, wx, wy, wz = _cell(x, y, z, res[level], side[level], base[level], level < n_dense, mask)
                ax0 = _ONE - wx
                ay0 = _ONE - wy
                az0 = _ONE - wz
                # torch_forward's product order: (x factor * y factor) * z factor.
                w0 = ax0 * ay0 * az0
                w1 = wx * ay0 * az0
                w2 = ax0 * wy * az0
                w3 = wx * wy * az0
                w4 = ax0 * ay0 * wz
                w5 = wx * ay0 * wz
                w6 = ax0 * wy * wz
                w7 = wx * wy * wz
                for f in range(F):
                    out[job, level * F + f] = (w0 * table[rows[0], f] + w1 * table[rows[1], f]
                                               + w2 * table[rows[2], f] + w3 * table[rows[3], f]
                                               + w4 * table[rows[4], f] + w5 * table[rows[5], f]
                                               + w6 * table[rows[6], f] + w7 * table[rows[7], f])
            for col in range(active * F, levels * F):
                out[job, col] = _ZERO

    @njit(parallel=True, **_JIT)
    def _backward(u, offsets, table, grad_out, res, side, base, n_dense, mask, active, groups,
                  grad_table, need_table, grad_u, need_u):
        """grad_table: (groups, rows, F), group g's share of the table gradient (rows: the active
        levels' rows); grad_u: (active, N, 3), level l's share of the positions' gradient."""
        n = u.shape[0]
        taps = offsets.shape[0]
        F = table.shape[1]
        for task in prange(active * groups):
            level = task % active
            group = task // active
            first = group * n // groups
            last = (group + 1) * n // groups
            r = res[level]
            s = side[level]
            b = base[level]
            dense = level < n_dense
            col = level * F
            for p in range(first, last):
                gx = _ZERO
                gy = _ZERO
                gz = _ZERO
                # Taps of one point touch neighbouring rows: they run back to back.
                for k in range(taps):
                    x_raw = u[p, 0] + offsets[k, 0]
                    y_raw = u[p, 1] + offsets[k, 1]
                    z_raw = u[p, 2] + offsets[k, 2]
                    rows, wx, wy, wz = _cell(_clamp01(x_raw), _clamp01(y_raw), _clamp01(z_raw), r, s, b, dense, mask)
                    ax0 = _ONE - wx
                    ay0 = _ONE - wy
                    az0 = _ONE - wz
                    j = k * n + p
                    if need_table:
                        w = (ax0 * ay0 * az0, wx * ay0 * az0, ax0 * wy * az0, wx * wy * az0,
                             ax0 * ay0 * wz, wx * ay0 * wz, ax0 * wy * wz, wx * wy * wz)
                        for f in range(F):
                            g = grad_out[j, col + f]
                            for c in range(8):
                                grad_table[group, rows[c], f] += w[c] * g
                    if need_u:
                        # along[c] = <table row of corner c, upstream gradient>
                        a0 = _ZERO
                        a1 = _ZERO
                        a2 = _ZERO
                        a3 = _ZERO
                        a4 = _ZERO
                        a5 = _ZERO
                        a6 = _ZERO
                        a7 = _ZERO
                        for f in range(F):
                            g = grad_out[j, col + f]
                            a0 += table[rows[0], f] * g
                            a1 += table[rows[1], f] * g
                            a2 += table[rows[2], f] * g
                            a3 += table[rows[3], f] * g
                            a4 += table[rows[4], f] * g
                            a5 += table[rows[5], f] * g
                            a6 += table[rows[6], f] * g
                            a7 += table[rows[7], f] * g
                        # d(weight)/d(frac) along an axis: +-1 times the other two factors; d(frac)/du = res,
                        # and clamp passes the gradient only inside [0, 1] (both ends included, as torch's).
                        if x_raw >= _ZERO and x_raw <= _ONE:
                            gx += r * (ay0 * az0 * (a1 - a0) + wy * az0 * (a3 - a2)
                                       + ay0 * wz * (a5 - a4) + wy * wz * (a7 - a6))
                        if y_raw >= _ZERO and y_raw <= _ONE:
                            gy += r * (ax0 * az0 * (a2 - a0) + wx * az0 * (a3 - a1)
                                       + ax0 * wz * (a6 - a4) + wx * wz * (a7 - a5))
                        if z_raw >= _ZERO and z_raw <= _ONE:
                            gz += r * (ax0 * ay0 * (a4 - a0) + wx * ay0 * (a5 - a1)
                                       + ax0 * wy * (a6 - a2) + wx * wy * (a7 - a3))
                if need_u:
                    grad_u[level, p, 0] = gx
                    grad_u[level, p, 1] = gy
                    grad_u[level, p, 2] = gz


def _groups(active, threads, active_rows, features):
    """Point groups per level in the backward: enough (level, group) tasks to keep every thread busy
    in equal rounds, within the buffers' memory budget (each extra group holds a copy of the active
    rows)."""
    if active >= threads and active % threads == 0:
        return 1
    best = 1
    limit = max(1, _GROUP_BUFFER_BYTES // max(1, active_rows * features * 4))
    for groups in range(1, min(threads, limit) + 1):
        best = groups
        tasks = groups * active
        if tasks % threads == 0 or tasks >= 4 * threads:
            break
    return best


class _Layout:
    """The per-level numbers the kernels read, as numpy arrays."""

    def __init__(self, grid):
        self.res = grid.resolution_t.detach().cpu().to(torch.float32).numpy()
        self.side = grid.side.detach().cpu().to(torch.int64).numpy()
        self.base = grid.row_offsets.detach().cpu().to(torch.int64).numpy()
        self.n_dense = int(grid.dense_levels)
        self.mask = int(grid.table_size - 1)
        self.levels = int(grid.cfg.levels)
        self.features = int(grid.cfg.features)
        rows = [min(grid.table_size, int(s) ** 3) for s in self.side]
        self.level_end = np.cumsum(rows)  # row after each level's last

    def active_rows(self, active):
        return int(self.level_end[active - 1])


class NumbaHashEncode(torch.autograd.Function):
    """(u (N, 3), table (rows, F) float32, offsets (K, 3)) -> (K * N, levels * F), tap-major;
    gradients for u and the table (each only when it requires one)."""

    @staticmethod
    def forward(ctx, u, table, offsets, layout, active):
        u = u.detach().contiguous().to(torch.float32)
        offsets = offsets.detach().contiguous().to(torch.float32)
        weights = table.detach().contiguous()
        n, taps = u.shape[0], offsets.shape[0]
        out = torch.empty(taps * n, layout.levels * layout.features, dtype=torch.float32)
        if out.numel():
            _forward(u.numpy(), offsets.numpy(), weights.numpy(), layout.res, layout.side, layout.base,
                     layout.n_dense, layout.mask, active, out.numpy())
        ctx.save_for_backward(u, weights, offsets)
        ctx.layout, ctx.active = layout, active
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        u, weights, offsets = ctx.saved_tensors
        layout, active = ctx.layout, ctx.active
        need_u, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_u = grad_table = None
        n = u.shape[0]
        if not (need_u or need_table):
            return None, None, None, None, None
        if need_table:
            grad_table = torch.zeros(weights.shape, dtype=torch.float32)
        if need_u:
            grad_u = torch.zeros(n, 3, dtype=torch.float32)
        if n == 0 or offsets.shape[0] == 0:
            return grad_u, grad_table, None, None, None
        grad_out = grad_out.contiguous().to(torch.float32)
        features = layout.features
        rows = layout.active_rows(active)
        groups = _groups(active, numba.get_num_threads(), rows, features) if need_table else \
            max(1, math.ceil(numba.get_num_threads() / active))
        groups = min(groups, n)
        if need_table:
            if groups == 1:
                table_buffer = grad_table.numpy()[None]
            else:
                table_buffer = np.zeros((groups, rows, features), dtype=np.float32)
        else:
            table_buffer = np.zeros((1, 1, features), dtype=np.float32)
        u_buffer = np.empty((active, n, 3), dtype=np.float32) if need_u else np.zeros((1, 1, 3), dtype=np.float32)
        _backward(u.numpy(), offsets.numpy(), weights.numpy(), grad_out.numpy(), layout.res, layout.side,
                  layout.base, layout.n_dense, layout.mask, active, groups, table_buffer, need_table,
                  u_buffer, need_u)
        if need_table and groups > 1:
            torch.sum(torch.from_numpy(table_buffer), 0, out=grad_table[:rows])
        if need_u:
            torch.sum(torch.from_numpy(u_buffer), 0, out=grad_u)
        return grad_u, grad_table, None, None, None


def encode(grid, u, offsets):
    """The encoding of u + offsets[k] for every row k of offsets: (K * N, levels * features) float32,
    rows k * N .. (k + 1) * N - 1 for offsets[k]. grid: an engine.nn.encoding.HashGrid whose table is
    on the CPU; u (N, 3) float32 in [0, 1]; offsets (K, 3) in the same units (row 0 usually zeros).
    Differentiable once, for the table and for u."""
    if not available():
        raise RuntimeError("numba does not import: the numba hash-grid encoding is unavailable")
    if grid.table.device.type != "cpu" or u.device.type != "cpu":
        raise ValueError("the numba encoding runs on CPU tensors")
    if grid.table.dtype != torch.float32:
        raise ValueError(f"the numba encoding needs a float32 table, got {grid.table.dtype}")
    offsets = torch.as_tensor(offsets, dtype=torch.float32)
    layout = getattr(grid, "_numba_layout", None)
    if layout is None:  # the per-level numbers depend on the grid's configuration alone: made once
        layout = grid._numba_layout = _Layout(grid)
    return NumbaHashEncode.apply(u, grid.table, offsets, layout, int(grid.active_levels))
