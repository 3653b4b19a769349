"""Triton kernels for the multi-resolution hash encoding (engine.nn.encoding.HashGrid's `triton` backend).

One program encodes a block of points at one level for one tap. With TAPS = 7 the same launch also
encodes the 6 central-difference taps u +- eps e_axis of every point (Neuralangelo's numerical
gradient) without materialising the 7N positions: output rows are tap-major, [points; +x; -x; +y; -y;
+z; -z], as engine.nn.model.central_differences expects.

The backward scatters the table gradient with fp32 atomic adds (one per corner, feature and point)
and, when asked, accumulates the gradient with respect to the positions (a dynamic frame's motion is
optimised through them). It is not differentiable itself: the analytic-gradient mode (double
backward) runs the torch reference.

Tables may be read from a float16 copy (`lookup`): the lookups move half the bytes, and the field is
still exactly trilinear between the (rounded) vertex values, so numerical gradients see no rounding
noise between taps; gradients and the optimiser stay in float32.

Indices follow engine.nn.encoding exactly: dense levels index (x + s (y + s z)) with s = N_l + 1; hashed
levels xor(x * 1, y * 2654435761, z * 805459861) & (T - 1), computed in uint32 (the low bits of the
int64 product the torch backend computes are the same).

Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (tests).
"""
import torch
import triton
import triton.language as tl

BLOCK = 128


@triton.jit
def _corner_rows(ix, iy, iz, CORNER: tl.constexpr, side, base, dense, table_mask):
    """Table rows of lattice corner CORNER (bits x, y, z) of the cells at (ix, iy, iz)."""
    x = ix + (CORNER & 1)
    y = iy + ((CORNER >> 1) & 1)
    z = iz + ((CORNER >> 2) & 1)
    dense_row = x + side * (y + side * z)
    hashed = (x.to(tl.uint32) * 1) ^ (y.to(tl.uint32) * 2654435761) ^ (z.to(tl.uint32) * 805459861)
    hashed_row = (hashed & table_mask).to(tl.int64)
    return base + tl.where(dense, dense_row, hashed_row)


@triton.jit
def _side_weight(w, UPPER: tl.constexpr):
    """The trilinear factor along one axis: w toward the upper corner, 1 - w toward the lower one.
    (A constexpr choice: compiled code has no branch. Loop-local `x: tl.constexpr = ...` annotations
    cannot be used for this: the compiler refuses to redefine them in every unrolled iteration.)"""
    if UPPER:
        factor = w
    else:
        factor = 1.0 - w
    return factor


@triton.jit
def _cell(x, y, z, res):
    """Lower corner (int64) and fractional position of points x, y, z in [0, 1] in a level of
    resolution res; the last cell of each level is closed on both sides (a point on the far face
    stays in it)."""
    px = x * res
    py = y * res
    pz = z * res
    fx = tl.minimum(tl.floor(px), res - 1.0)
    fy = tl.minimum(tl.floor(py), res - 1.0)
    fz = tl.minimum(tl.floor(pz), res - 1.0)
    return fx.to(tl.int64), fy.to(tl.int64), fz.to(tl.int64), px - fx, py - fy, pz - fz


@triton.jit
def _interpolate(table_ptr, x, y, z, res, side, base, dense, table_mask, live, F: tl.constexpr, BLOCK: tl.constexpr):
    """(BLOCK, F) float32: one level's features at points x, y, z in [0, 1], blended from its 8 corners."""
    ix, iy, iz, wx, wy, wz = _cell(x, y, z, res)
    f = tl.arange(0, F)
    acc = tl.zeros((BLOCK, F), dtype=tl.float32)
    for corner in tl.static_range(8):
        weight = (_side_weight(wx, corner & 1) * _side_weight(wy, (corner >> 1) & 1)
                  * _side_weight(wz, (corner >> 2) & 1))
        rows = _corner_rows(ix, iy, iz, corner, side, base, dense, table_mask)
        values = tl.load(table_ptr + rows[:, None] * F + f[None, :], mask=live[:, None], other=0.0)
        acc += weight[:, None] * values.to(tl.float32)
    return acc


@triton.jit
def _tap_position(u_ptr, p, live, tap, eps, axis: tl.constexpr):
    """Coordinate `axis` of tap `tap` of points p (tap 0: the point; 2a+1, 2a+2: +-eps along axis a)."""
    value = tl.load(u_ptr + p * 3 + axis, mask=live, other=0.0)
    shift = (tap == 2 * axis + 1).to(tl.float32) - (tap == 2 * axis + 2).to(tl.float32)
    return value + shift * eps


@triton.jit
def _encode_forward(u_ptr, table_ptr, out_ptr, res_ptr, side_ptr, offset_ptr,
                    n, n_dense, table_mask, eps, out_stride,
                    F: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    level = tl.program_id(1)
    tap = tl.program_id(2)
    p = (block * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    live = p < n
    f = tl.arange(0, F)
    x = tl.minimum(tl.maximum(_tap_position(u_ptr, p, live, tap, eps, 0), 0.0), 1.0)
    y = tl.minimum(tl.maximum(_tap_position(u_ptr, p, live, tap, eps, 1), 0.0), 1.0)
    z = tl.minimum(tl.maximum(_tap_position(u_ptr, p, live, tap, eps, 2), 0.0), 1.0)
    res = tl.load(res_ptr + level)
    side = tl.load(side_ptr + level)
    base = tl.load(offset_ptr + level)
    dense = level < n_dense
    acc = _interpolate(table_ptr, x, y, z, res, side, base, dense, table_mask, live, F, BLOCK)
    out_rows = tap * n + p
    tl.store(out_ptr + out_rows[:, None] * out_stride + level * F + f[None, :], acc, mask=live[:, None])


@triton.jit
def _encode_backward(u_ptr, table_ptr, grad_out_ptr, grad_table_ptr, grad_u_ptr, res_ptr, side_ptr, offset_ptr,
                     n, n_dense, table_mask, eps, out_stride,
                     F: tl.constexpr, BLOCK: tl.constexpr, NEED_POSITIONS: tl.constexpr, NEED_TABLE: tl.constexpr):
    block = tl.program_id(0)
    level = tl.program_id(1)
    tap = tl.program_id(2)
    p = (block * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    live = p < n
    f = tl.arange(0, F)
    x_raw = _tap_position(u_ptr, p, live, tap, eps, 0)
    y_raw = _tap_position(u_ptr, p, live, tap, eps, 1)
    z_raw = _tap_position(u_ptr, p, live, tap, eps, 2)
    x = tl.minimum(tl.maximum(x_raw, 0.0), 1.0)
    y = tl.minimum(tl.maximum(y_raw, 0.0), 1.0)
    z = tl.minimum(tl.maximum(z_raw, 0.0), 1.0)
    res = tl.load(res_ptr + level)
    side = tl.load(side_ptr + level)
    base = tl.load(offset_ptr + level)
    dense = level < n_dense
    ix, iy, iz, wx, wy, wz = _cell(x, y, z, res)
    out_rows = tap * n + p
    grad = tl.load(grad_out_ptr + out_rows[:, None] * out_stride + level * F + f[None, :], mask=live[:, None],
                   other=0.0).to(tl.float32)
    gx = tl.zeros((BLOCK,), dtype=tl.float32)
    gy = tl.zeros((BLOCK,), dtype=tl.float32)
    gz = tl.zeros((BLOCK,), dtype=tl.float32)
    for corner in tl.static_range(8):
        ax = _side_weight(wx, corner & 1)
        ay = _side_weight(wy, (corner >> 1) & 1)
        az = _side_weight(wz, (corner >> 2) & 1)
        rows = _corner_rows(ix, iy, iz, corner, side, base, dense, table_mask)
        offsets = rows[:, None] * F + f[None, :]
        if NEED_TABLE:
            tl.atomic_add(grad_table_ptr + offsets, (ax * ay * az)[:, None] * grad, mask=live[:, None])
        if NEED_POSITIONS:
            values = tl.load(table_ptr + offsets, mask=live[:, None], other=0.0).to(tl.float32)
            along = tl.sum(values * grad, axis=1)
            # d(weight)/d(frac) is +-1 times the other two factors (+ toward the upper corner); d(frac)/du = res.
            gx += along * (2.0 * (corner & 1) - 1.0) * ay * az
            gy += along * (2.0 * ((corner >> 1) & 1) - 1.0) * ax * az
            gz += along * (2.0 * ((corner >> 2) & 1) - 1.0) * ax * ay
    if NEED_POSITIONS:
        # clamp(u, 0, 1) passes the gradient inside [0, 1] only, as torch's clamp does.
        inside_x = ((x_raw >= 0.0) & (x_raw <= 1.0)).to(tl.float32)
        inside_y = ((y_raw >= 0.0) & (y_raw <= 1.0)).to(tl.float32)
        inside_z = ((z_raw >= 0.0) & (z_raw <= 1.0)).to(tl.float32)
        tl.atomic_add(grad_u_ptr + p * 3 + 0, gx * res * inside_x, mask=live)
        tl.atomic_add(grad_u_ptr + p * 3 + 1, gy * res * inside_y, mask=live)
        tl.atomic_add(grad_u_ptr + p * 3 + 2, gz * res * inside_z, mask=live)


class GridLayout:
    """What the kernels need to know of a HashGrid, as tensors on its device."""

    def __init__(self, grid):
        device = grid.table.device
        self.resolutions = grid.resolution_t.to(device=device, dtype=torch.float32).contiguous()
        self.side = grid.side.to(device=device, dtype=torch.int64).contiguous()
        self.offsets = grid.row_offsets.to(device=device, dtype=torch.int64).contiguous()
        self.dense_levels = int(grid.dense_levels)
        self.table_mask = grid.table_size - 1
        self.levels = grid.cfg.levels
        self.features = grid.cfg.features


class HashEncode(torch.autograd.Function):
    """(u (N, 3) in [0, 1], table (rows, F) float32, lookup: the table or its float16 copy) ->
    (taps * N, levels * F); levels at or above `active` are zeros."""

    @staticmethod
    def forward(ctx, u, table, lookup, layout, active, eps, taps):
        u = u.contiguous().float()
        n = u.shape[0]
        width = layout.levels * layout.features
        out = (torch.zeros if active < layout.levels else torch.empty)(taps * n, width, device=u.device,
                                                                        dtype=torch.float32)
        if n and active:
            grid = (triton.cdiv(n, BLOCK), active, taps)
            _encode_forward[grid](u, lookup, out, layout.resolutions, layout.side, layout.offsets,
                                  n, layout.dense_levels, layout.table_mask, float(eps), width,
                                  F=layout.features, BLOCK=BLOCK)
        ctx.save_for_backward(u, lookup)
        ctx.layout, ctx.active, ctx.eps, ctx.taps, ctx.table_shape = layout, active, eps, taps, table.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        u, lookup = ctx.saved_tensors
        layout, n = ctx.layout, u.shape[0]
        need_positions, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # A frozen table (the motion prediction's) gets no gradient: not even the allocation of one.
        grad_table = torch.zeros(ctx.table_shape, device=u.device, dtype=torch.float32) if need_table else None
        grad_u = torch.zeros_like(u) if need_positions else None
        if n and ctx.active and (need_table or need_positions):
            grid = (triton.cdiv(n, BLOCK), ctx.active, ctx.taps)
            # What the kernel does not write through still needs a pointer: the other output's.
            _encode_backward[grid](u, lookup, grad_out.contiguous().float(),
                                   grad_table if need_table else grad_u, grad_u if need_positions else grad_table,
                                   layout.resolutions, layout.side, layout.offsets,
                                   n, layout.dense_levels, layout.table_mask, float(ctx.eps),
                                   layout.levels * layout.features,
                                   F=layout.features, BLOCK=BLOCK, NEED_POSITIONS=need_positions,
                                   NEED_TABLE=need_table)
        return grad_u, grad_table, None, None, None, None, None


def encode(u, table, lookup, layout, active, eps=0.0, taps=1):
    return HashEncode.apply(u, table, lookup, layout, int(active), float(eps), int(taps))


@triton.jit
def _sdf_value(x_ptr, table_ptr, w_in_ptr, b_in_ptr, w_out_ptr, b_out, out_ptr, res_ptr, side_ptr, offset_ptr,
               n, n_dense, table_mask, active,
               F: tl.constexpr, HIDDEN: tl.constexpr, BLOCK: tl.constexpr):
    """SDF values of points x in [-1, 1]^3 through the encoding and a one-hidden-layer MLP, fused: the
    encoding's features go straight into the hidden layer's accumulator (nothing is written between).

    The levels are a run-time loop: unrolled (levels x features x corners) the quality preset's kernel
    took minutes to compile and the fast preset's was megabytes of code. One level's body (8 corner
    lookups of F features, then F rank-1 updates of the hidden layer) is what gets compiled."""
    p = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    live = p < n
    k = tl.arange(0, HIDDEN)
    f = tl.arange(0, F)
    hidden = tl.zeros((BLOCK, HIDDEN), dtype=tl.float32) + tl.load(b_in_ptr + k)[None, :]
    xs = tl.load(x_ptr + p * 3 + 0, mask=live, other=0.0)
    ys = tl.load(x_ptr + p * 3 + 1, mask=live, other=0.0)
    zs = tl.load(x_ptr + p * 3 + 2, mask=live, other=0.0)
    # w_in is the first layer's weight transposed: row j holds input j's weights to every hidden unit.
    hidden += xs[:, None] * tl.load(w_in_ptr + 0 * HIDDEN + k)[None, :]
    hidden += ys[:, None] * tl.load(w_in_ptr + 1 * HIDDEN + k)[None, :]
    hidden += zs[:, None] * tl.load(w_in_ptr + 2 * HIDDEN + k)[None, :]
    x = tl.minimum(tl.maximum((xs + 1.0) * 0.5, 0.0), 1.0)
    y = tl.minimum(tl.maximum((ys + 1.0) * 0.5, 0.0), 1.0)
    z = tl.minimum(tl.maximum((zs + 1.0) * 0.5, 0.0), 1.0)
    for level in range(0, active):
        res = tl.load(res_ptr + level)
        side = tl.load(side_ptr + level)
        base = tl.load(offset_ptr + level)
        dense = level < n_dense
        features = _interpolate(table_ptr, x, y, z, res, side, base, dense, table_mask, live, F, BLOCK)
        for j in tl.static_range(F):
            column = tl.sum(tl.where(f[None, :] == j, features, 0.0), axis=1)
            hidden += column[:, None] * tl.load(w_in_ptr + (3 + level * F + j) * HIDDEN + k)[None, :]
    # Softplus with beta 100 (torch's threshold: linear above beta * h = 20).
    scaled = hidden * 100.0
    hidden = tl.where(scaled > 20.0, hidden, tl.log(1.0 + tl.exp(tl.minimum(scaled, 20.0))) * 0.01)
    sdf = tl.sum(hidden * tl.load(w_out_ptr + k)[None, :], axis=1) + b_out
    tl.store(out_ptr + p, sdf, mask=live)


def sdf_block(hidden):
    """Points per program of the fused SDF kernel: its (BLOCK, HIDDEN) hidden layer lives in registers,
    so wide networks take fewer points (64 for the fast preset's 64 units, 16 for quality's 256)."""
    return max(16, min(64, 4096 // hidden))


def sdf_values(x, lookup, layout, active, first, last):
    """SDF values (N,) at x (N, 3) in [-1, 1] for an SDF MLP with one hidden layer (`first`, `last`:
    its nn.Linear layers; the SDF is the last layer's output 0). No autograd: for queries that need
    only the value (occupancy refresh, early-termination pre-pass, mesh extraction)."""
    x = x.contiguous().float()
    n = x.shape[0]
    out = torch.empty(n, device=x.device, dtype=torch.float32)
    if n:
        hidden = first.weight.shape[0]
        block = sdf_block(hidden)
        _sdf_value[(triton.cdiv(n, block),)](
            x, lookup, first.weight.detach().t().contiguous().float(), first.bias.detach().float().contiguous(),
            last.weight.detach()[0].float().contiguous(), float(last.bias.detach()[0]), out,
            layout.resolutions, layout.side, layout.offsets, n, layout.dense_levels, layout.table_mask, int(active),
            F=layout.features, HIDDEN=hidden, BLOCK=block)
    return out


# -- what the engine launches, for compiling ahead of time (tests, `bench compile`) ---------------------
# Triton type names of the launches' arguments; `table` is the lookup table's (float32, or its float16
# copy). Integers are 32-bit: point counts stay below 2^31 (rows beyond are computed in int64 inside).
_POINTERS = {"res_ptr": "*fp32", "side_ptr": "*i64", "offset_ptr": "*i64"}
_INTS = {"n": "i32", "n_dense": "i32", "table_mask": "i32"}


def kernel_signatures(table):
    """{kernel name: (jit function, {argument: Triton type or "constexpr"})} for a lookup table of
    Triton type `table` (fp32 | fp16), in the order of each kernel's parameters."""
    forward = {"u_ptr": "*fp32", "table_ptr": f"*{table}", "out_ptr": "*fp32", **_POINTERS, **_INTS,
               "eps": "fp32", "out_stride": "i32", "F": "constexpr", "BLOCK": "constexpr"}
    backward = {"u_ptr": "*fp32", "table_ptr": f"*{table}", "grad_out_ptr": "*fp32", "grad_table_ptr": "*fp32",
                "grad_u_ptr": "*fp32", **_POINTERS, **_INTS, "eps": "fp32", "out_stride": "i32",
                "F": "constexpr", "BLOCK": "constexpr", "NEED_POSITIONS": "constexpr", "NEED_TABLE": "constexpr"}
    sdf = {"x_ptr": "*fp32", "table_ptr": f"*{table}", "w_in_ptr": "*fp32", "b_in_ptr": "*fp32",
           "w_out_ptr": "*fp32", "b_out": "fp32", "out_ptr": "*fp32", **_POINTERS, **_INTS, "active": "i32",
           "F": "constexpr", "HIDDEN": "constexpr", "BLOCK": "constexpr"}
    return {"_encode_forward": (_encode_forward, forward), "_encode_backward": (_encode_backward, backward),
            "_sdf_value": (_sdf_value, sdf)}
