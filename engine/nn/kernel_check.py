"""The start-up check of the Triton backend: the kernels a job will launch, compiled and run once on a
tiny grid against the torch reference (engine.nn.backends.kernel_problem runs it before training on a
GPU). Apart from hashgrid_triton so that the kernels' module needs nothing of the encoding's."""
import torch

from ..config import HashGridConfig
from . import hashgrid_triton
from .encoding import HashGrid
from .triton_aot import BACKWARD_NEEDS


def self_check(device, features, sdf_hidden=None, half_table=False):
    """Compile and run the kernels a job on `device` will launch, once, on a tiny grid, against the torch
    reference: forward (1 and 7 taps), backward in each of its variants (triton_aot.BACKWARD_NEEDS) and, given a
    one-hidden-layer SDF width, the fused SDF value. Raises (RuntimeError naming the kernel, or
    whatever compiling raised) when one fails or disagrees; returns None when all agree."""
    cfg = HashGridConfig(levels=3, features=features, log2_table=6, base_resolution=2, finest_resolution=9)
    generator = torch.Generator().manual_seed(0)
    reference = HashGrid(cfg).to(device)
    values = torch.randn(reference.table.shape, generator=generator)
    reference.table.data.copy_(values.half().float() if half_table else values)
    fused = HashGrid(cfg).to(device)
    fused.table.data.copy_(reference.table.data)
    fused.set_backend("triton", half_table=half_table)
    u = torch.rand(300, 3, generator=generator).to(device)  # more than one block of points

    def agree(kernel, got, want):
        got, want = got.detach(), want.detach()
        scale = float(want.abs().max().clamp_min(1e-6))
        error = float((got.float() - want.float()).abs().max()) / scale
        if not error < 1e-3:
            raise RuntimeError(f"Triton kernel {kernel} disagrees with the torch reference (relative error {error:.3g})")

    for need_positions, need_table in BACKWARD_NEEDS:
        for grid in (reference, fused):
            grid.table.requires_grad_(need_table)  # a frozen table: the motion prediction's
        u_ref, u_fused = u.clone().requires_grad_(need_positions), u.clone().requires_grad_(need_positions)
        out_ref, out_fused = reference.encode_taps(u_ref, 0.01), fused.encode_taps(u_fused, 0.01)
        agree("_encode_forward (7 taps)", out_fused, out_ref)
        weights = torch.randn(out_ref.shape, generator=generator).to(device)
        (out_ref * weights).sum().backward()
        (out_fused * weights).sum().backward()
        if need_table:
            agree("_encode_backward (table)", fused.table.grad, reference.table.grad)
        elif fused.table.grad is not None:
            raise RuntimeError("Triton kernel _encode_backward gave a frozen table a gradient")
        if need_positions:
            agree("_encode_backward (positions)", u_fused.grad, u_ref.grad)
        reference.table.grad = fused.table.grad = None
    for grid in (reference, fused):
        grid.table.requires_grad_(True)
    with torch.no_grad():
        agree("_encode_forward", fused(u), reference(u))
        if sdf_hidden and sdf_hidden & (sdf_hidden - 1) == 0:
            first = torch.nn.Linear(3 + reference.output_dim, sdf_hidden).to(device)
            last = torch.nn.Linear(sdf_hidden, 2).to(device)
            x = u * 2.0 - 1.0
            hidden = torch.nn.functional.softplus(first(torch.cat([x, reference(u)], -1)), beta=100.0)
            agree("_sdf_value", hashgrid_triton.sdf_values(x, fused._triton_lookup(), fused.triton_layout(), cfg.levels, first, last),
                  last(hidden)[:, 0])
