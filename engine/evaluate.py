"""Held-out evaluation: render views from a trained job and compare them with the photographs.

PSNR is over the whole image, both sides composited on the job's background the same way as in
training (with masks: the photograph outside its mask is the background); mask IoU compares the
rendered opacity (> 0.5) with the mask. With an appearance embedding (engine.nn.model.ColorNetwork),
held-out views render with the mean appearance, and training views (a job that held none out) with
their own.
"""
import math
import os

import numpy as np
import torch

from .io import protocol
from .data import camera_rays, downscaled_view, load_image


@torch.no_grad()
def render_view(trainer, view, chunk=1024, train_index=None):
    """RGB (H, W, 3) composited over the background, and the surface's opacity (H, W), of `view`
    (already at the size to render) from the model; `train_index`: the view's index among the
    training views (its appearance), None: not a training view (the mean appearance)."""
    model, n = trainer.model, trainer.data.normalization
    model.sdf.grid.set_active_levels(trainer.cfg.encoding.levels)
    rows, cols = np.mgrid[0:view.height, 0:view.width]
    pixels = np.stack([cols.ravel(), rows.ravel()], -1).astype(float)
    dirs = torch.tensor(camera_rays(view, pixels), dtype=torch.float32)
    origin = torch.tensor(n.to_normalized(np.asarray(view.c2w)[:3, 3]), dtype=torch.float32)
    rgb, opacity = [], []
    for d in dirs.split(chunk):
        d = d.to(trainer.device)
        views = None if train_index is None else torch.full((len(d),), train_index, device=trainer.device)
        out = trainer.render(origin.to(trainer.device).expand(len(d), 3), d, cos_anneal=1.0,
                             eps=model.sdf.finest_cell(), views=views)
        rgb.append(out["rgb"].cpu())
        opacity.append(out["opacity"].cpu())
    shape = (view.height, view.width)
    return torch.cat(rgb).view(*shape, 3).numpy(), torch.cat(opacity).view(shape).numpy()


def evaluate_views(trainer, views, downscale, out_dir):
    """Render `views` at 1/downscale, write PNGs and eval.json into out_dir; return the summary."""
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    background = trainer.cfg.render.background
    results = []
    for i, full in enumerate(views):
        view = downscaled_view(full, downscale)
        size = (view.width, view.height) if downscale > 1 else None
        gt, alpha = load_image(full.image_path, f"held-out view {i}", size)
        if full.mask_path:
            alpha = load_image(full.mask_path, f"mask of held-out view {i}", size)[0][..., 0]
        mask = None if alpha is None else (alpha > 0.5).astype(np.float32)
        if mask is not None and trainer.cfg.data.use_masks:  # trained without masks: the whole photograph
            gt = gt * mask[..., None] + background * (1 - mask[..., None])
        trained = next((j for j, v in enumerate(trainer.rig.views) if v is full), None)
        if trained is not None and trained >= trainer.model.appearance_views:
            trained = None  # no embedding (or one of other views): the mean, or nothing to choose
        pred, opacity = render_view(trainer, view, train_index=trained)
        mse = float(((pred - gt) ** 2).mean())
        iou = None
        if mask is not None:
            inter = np.logical_and(opacity > 0.5, mask > 0.5).sum()
            union = np.logical_or(opacity > 0.5, mask > 0.5).sum()
            iou = float(inter / union) if union else 1.0
        render_path = os.path.join(out_dir, f"{view.name}.png")
        Image.fromarray(np.clip(np.concatenate([gt, pred], 1) * 255 + 0.5, 0, 255).astype(np.uint8)).save(render_path)
        results.append({"image": full.image_path, "render": render_path, "psnr": -10 * math.log10(max(mse, 1e-10)),
                        "mask_iou": iou})
        trainer.out.log(f"evaluated {view.name}: PSNR {results[-1]['psnr']:.2f}"
                        + (f", mask IoU {iou:.3f}" if iou is not None else ""))
    ious = [r["mask_iou"] for r in results if r["mask_iou"] is not None]
    summary = {"views": results, "psnr": float(np.mean([r["psnr"] for r in results])),
               "mask_iou": float(np.mean(ious)) if ious else None, "downscale": downscale}
    path = os.path.join(out_dir, "eval.json")
    protocol.write_json(path, summary)
    return path, summary
