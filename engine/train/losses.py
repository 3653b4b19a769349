"""The training losses of one batch: colour (L1 or Huber), eikonal, curvature (Neuralangelo's mean
|Laplacian|, from the same taps as the numerical gradient) and the mask's binary cross-entropy."""
import torch

from .schedules import curvature_schedule


def training_losses(out, rgb_gt, mask, cfg, step):
    """(weighted total, {term: unweighted value}) for render_rays' output `out` against the batch's
    colours and mask values (None without masks); `step`: where the curvature schedule stands."""
    tc = cfg.train
    rgb = out["rgb"]
    color = (torch.nn.functional.huber_loss(rgb, rgb_gt, delta=0.1) if tc.color_loss == "huber"
             else (rgb - rgb_gt).abs().mean())
    losses = {"color": color}
    if out["grad"].shape[0]:
        losses["eikonal"] = ((out["grad"].norm(dim=-1) - 1.0) ** 2).mean()
        if out["laplacian"] is not None:
            losses["curvature"] = out["laplacian"].abs().mean()
    if mask is not None:
        opacity = out["opacity"].clamp(1e-3, 1.0 - 1e-3)
        losses["mask"] = torch.nn.functional.binary_cross_entropy(opacity, mask)
    weights = {"color": tc.color_weight, "eikonal": tc.eikonal_weight, "mask": tc.mask_weight,
               "curvature": tc.curvature_weight * curvature_schedule(step, cfg)}
    return sum(weights[k] * v for k, v in losses.items()), losses
