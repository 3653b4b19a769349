"""Images, masks and rays of a rig, and the normalisation of its region of interest.

The engine works in a normalised space where the region of interest is the unit sphere:
p_norm = (p_world - center) / radius. With masks, the region is the bounding sphere of the visual hull;
without, it is guessed from where the cameras look (a warning says so).
"""
import dataclasses
import json
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .io.protocol import write_json
from .io.region import estimate_region
from .io.rig import RigError, image_size
from .io.rig.model import MAX_IMAGE_PIXELS, check_image_pixels, header_size

try:
    from PIL import Image
except ImportError:  # pragma: no cover - the engine's own Python always has Pillow (build.py pins it)
    Image = None


@dataclass
class Normalization:
    center: np.ndarray  # world point mapped to the origin
    radius: float       # world length mapped to 1

    def to_world(self, points):
        return points * self.radius + self.center

    def to_normalized(self, points):
        return (points - self.center) / self.radius

    def matrix(self):
        """4x4 mapping normalised coordinates to world (the IDR/NeuS `scale_mat`)."""
        m = np.eye(4)
        m[:3, :3] *= self.radius
        m[:3, 3] = self.center
        return m

    @classmethod
    def from_matrix(cls, matrix):
        """From a 4x4 normalised-to-world similarity (e.g. IDR's scale_mat): centre and scale."""
        m = np.asarray(matrix, dtype=float)
        scale = abs(np.linalg.det(m[:3, :3])) ** (1.0 / 3.0)
        if not np.isfinite(m).all() or scale <= 0:
            raise RigError("the rig's normalisation matrix is not a usable similarity transform")
        return cls(center=m[:3, 3].copy(), radius=float(scale))

    def save(self, path):
        write_json(path, {"center": self.center.tolist(), "radius": float(self.radius),
                          "normalized_to_world": self.matrix().tolist()})

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls(center=np.array(data["center"], dtype=float), radius=float(data["radius"]))


def load_image(path, where, size=None):
    """(H, W, 3) float32 RGB in [0, 1] and the alpha channel (H, W) float32 in [0, 1], or None when the
    image has none; `size` (width, height) resamples both by area averaging (for --downscale).

    Every mode Pillow opens is converted by value, not clipped: 8-bit grey (L) and 1-bit become three
    equal channels; palette images (P, PA) take their palette's colours; CMYK JPEGs Pillow's CMYK to RGB;
    16-bit grey (I;16, I;16B, I;16L and Pillow's 32-bit I) is scaled by 1/65535 (larger values clip to 1).
    Alpha (RGBA, LA, PA, or a PNG tRNS transparency of a P, L, RGB or 16-bit grey image) becomes the
    alpha channel. Images above MAX_IMAGE_PIXELS are refused (RigError naming the file and its size)
    before anything is decoded.
    """
    if Image is None:
        raise RigError("Pillow is not installed in the engine's Python; run `python3 build.py setup`")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                check_image_pixels(path, *im.size)
                im.load()
                if im.mode in WIDE_GREY_MODES:
                    return _wide_grey(im, size)
                has_alpha = _has_alpha(im)
                im = im.convert("RGBA" if has_alpha else "RGB")
                if size is not None and tuple(size) != im.size:
                    im = im.resize(tuple(size), Image.BOX)
                array = np.asarray(im, dtype=np.float32) / 255.0
    except RigError:
        raise
    except Image.DecompressionBombError as exc:   # Pillow's own limit, checked in Image.open
        try:
            size_in_header = header_size(path)
        except RigError:
            size_in_header = None
        if size_in_header is not None:
            check_image_pixels(path, *size_in_header)
        raise RigError(f"{path}: image for {where} is too large ({exc}); Marble reads images of at most "
                       f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise RigError(f"{path}: cannot read image for {where} ({exc})") from None
    return array[..., :3], (array[..., 3] if has_alpha else None)


# Pillow modes of grey images deeper than 8 bits (16-bit PNGs): values on the 0..65535 scale.
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _has_alpha(im):
    """Whether load_image gives the opened image `im` an alpha channel (its header says)."""
    if im.mode in WIDE_GREY_MODES:
        transparency = im.info.get("transparency")
        return isinstance(transparency, int) and not isinstance(transparency, bool)
    return im.mode in ALPHA_MODES or "transparency" in im.info


def image_has_alpha(path):
    """Whether load_image would give the image at `path` an alpha channel (a mask), from its header
    alone; False when it cannot be opened (load_image says why when the job reads it)."""
    if Image is None:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return _has_alpha(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def _wide_grey(im, size):
    """load_image for a 16-bit grey image: grey / 65535 in three channels; its tRNS grey value, if any,
    becomes alpha 0 (else 1)."""
    raw = np.asarray(im).astype(np.float64)
    grey = np.clip(raw / 65535.0, 0.0, 1.0).astype(np.float32)
    transparency = im.info.get("transparency")
    alpha = None
    if isinstance(transparency, int) and not isinstance(transparency, bool):
        alpha = (raw != transparency).astype(np.float32)
    if size is not None and tuple(size) != (grey.shape[1], grey.shape[0]):
        grey, alpha = _resize(grey, size), (None if alpha is None else _resize(alpha, size))
    return np.repeat(grey[..., None], 3, axis=-1), alpha


def _resize(array, size):
    """A float32 (H, W) array resampled to `size` (width, height) by area averaging."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(array, dtype=np.float32)).resize(tuple(size), Image.BOX), dtype=np.float32)


def downscaled_view(view, factor):
    """The view at 1/factor of its size: K scaled with the image, so that pixel centres stay at +0.5."""
    if factor == 1:
        return view
    width, height = max(1, view.width // factor), max(1, view.height // factor)
    K = np.asarray(view.K, dtype=float).copy()
    K[0] *= width / view.width
    K[1] *= height / view.height
    return dataclasses.replace(view, width=width, height=height, K=K)


def undistort_points(x, y, k1, k2, p1, p2, iterations=10):
    """Normalised image coordinates through the inverse OpenCV k1 k2 p1 p2 model (fixed-point
    iteration). Plain arithmetic, so it serves numpy arrays and torch tensors alike."""
    x0, y0 = x, y
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x, y = (x0 - dx) / radial, (y0 - dy) / radial
    return x, y


def camera_rays(view, pixels_xy):
    """World-space ray directions (unit, OpenCV camera) through pixel centres `pixels_xy` (N, 2)."""
    K = np.asarray(view.K, dtype=float)
    xy = (pixels_xy + 0.5 - K[:2, 2]) / np.array([K[0, 0], K[1, 1]])
    if view.distortion is not None:
        xy = np.stack(undistort_points(xy[:, 0], xy[:, 1], *view.distortion), -1)
    dirs = np.concatenate([xy, np.ones((len(xy), 1))], -1) @ np.asarray(view.c2w)[:3, :3].T
    return dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)


def project(view, points):
    """Pixel coordinates (N, 2) and depth (N,) of world points in `view` (no distortion)."""
    w2c = np.linalg.inv(np.asarray(view.c2w))
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    uv = cam[:, :2] / np.where(np.abs(z) < 1e-9, 1e-9, z)[:, None]
    K = np.asarray(view.K)
    return uv * np.array([K[0, 0], K[1, 1]]) + K[:2, 2], z


def carve(views, masks, points, min_seen=0.5):
    """Which points lie inside every silhouette that sees them and are seen by at least `min_seen` of
    the views (a point that few cameras frame, near one camera say, is not constrained enough)."""
    inside = np.ones(len(points), dtype=bool)
    seen = np.zeros(len(points), dtype=np.int32)
    for view, mask in zip(views, masks):
        px, z = project(view, points)
        h, w = mask.shape
        col, row = np.floor(px[:, 0]).astype(np.int64), np.floor(px[:, 1]).astype(np.int64)
        visible = (z > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        hit = np.zeros(len(points), dtype=bool)
        hit[visible] = mask[row[visible], col[visible]]
        inside &= hit | ~visible
        seen += visible
    return inside & (seen >= max(2, min_seen * len(views)))


def grid_points(center, half, resolution):
    axis = (np.arange(resolution) + 0.5) / resolution * 2 - 1
    g = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    return center + g * half


def estimate_normalization(views, masks, margin=1.1):
    """The region of interest as a Normalization, and warnings (a list of str)."""
    center, radius = estimate_region([v.c2w for v in views])
    cams = np.array([np.asarray(v.c2w)[:3, 3] for v in views])
    distance = np.linalg.norm(cams - center, axis=1)
    if masks is None:
        return Normalization(center, radius), [
            "no masks: the region to reconstruct is guessed from where the cameras look "
            f"(a sphere of radius {radius:.3g} around their common focus)"]
    half, res = float(distance.max()), 96
    pts = grid_points(center, half, res)
    keep = carve(views, masks, pts)
    if not keep.any():
        raise RigError("the masks leave nothing: no point lies inside every silhouette "
                       "(are the masks inverted, or the cameras wrong?)")
    # Refine once on a grid fitted to the first hull, then take its bounding sphere.
    lo, hi = pts[keep].min(0) - 2 * half / res, pts[keep].max(0) + 2 * half / res
    center2, half2 = (lo + hi) / 2, float((hi - lo).max() / 2)
    pts = grid_points(center2, half2, res)
    keep = carve(views, masks, pts)
    hull = pts[keep]
    lo, hi = hull.min(0), hull.max(0)
    sphere_center = (lo + hi) / 2
    radius = float(np.linalg.norm(hull - sphere_center, axis=1).max() + np.sqrt(3) * half2 / res)
    return Normalization(sphere_center, radius * margin), []


class RayDataset:
    """All pixels of all views, with per-view cameras in normalised space, for random ray batches.

    use_masks=False ignores the images' alpha and the mask files (RGB as stored, nothing composited):
    for captures whose masks are wrong or cut the object, trained as unmasked with the background model."""

    def __init__(self, rig, background=0.0, normalization=None, downscale=1, use_masks=True):
        views = [downscaled_view(v, downscale) for v in rig.views]
        rgbs, masks, any_alpha = [], [], False
        for i, (view, full) in enumerate(zip(views, rig.views)):
            actual = image_size(full.image_path)
            if tuple(actual) != (full.width, full.height):
                raise RigError(f"{full.image_path}: image is {actual[0]}x{actual[1]} but the rig "
                               f"says {full.width}x{full.height}")
            size = (view.width, view.height) if downscale > 1 else None
            rgb, alpha = load_image(view.image_path, f"view {i} of {rig.path}", size)
            if not use_masks:
                alpha = None
            elif view.mask_path:
                m, _ = load_image(view.mask_path, f"mask of view {i}", size)
                alpha = (m[..., 0] > 0.5).astype(np.float32)
            any_alpha |= alpha is not None
            rgbs.append(rgb)
            masks.append(alpha)
        self.has_masks = any_alpha
        if any_alpha:
            masks = [np.ones(r.shape[:2], np.float32) if m is None else (m > 0.5).astype(np.float32)
                     for r, m in zip(rgbs, masks)]
            # Straight alpha: composite onto the background the renderer composites onto.
            rgbs = [r * m[..., None] + background * (1 - m[..., None]) for r, m in zip(rgbs, masks)]
        self.views = views
        self.warnings = []
        if normalization is None:
            normalization, self.warnings = estimate_normalization(
                views, [m > 0.5 for m in masks] if any_alpha else None)
        self.normalization = normalization
        self.sizes = [(v.height, v.width) for v in views]
        counts = np.array([h * w for h, w in self.sizes])
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.rgb = torch.from_numpy(np.concatenate([r.reshape(-1, 3) for r in rgbs]).astype(np.float32))
        self.mask = (torch.from_numpy(np.concatenate([m.reshape(-1) for m in masks]).astype(np.float32))
                     if any_alpha else None)
        self.masks_np = [m > 0.5 for m in masks] if any_alpha else None
        # Per-view camera in normalised space: rotation (3x3) and origin, plus inverse intrinsics.
        self.rotations = torch.tensor(np.stack([np.asarray(v.c2w)[:3, :3] for v in views]), dtype=torch.float32)
        self.origins = torch.tensor(np.stack([normalization.to_normalized(np.asarray(v.c2w)[:3, 3])
                                              for v in views]), dtype=torch.float32)
        self.focal = torch.tensor([[v.K[0, 0], v.K[1, 1]] for v in views], dtype=torch.float32)
        self.principal = torch.tensor([[v.K[0, 2], v.K[1, 2]] for v in views], dtype=torch.float32)
        self.widths = torch.tensor([v.width for v in views], dtype=torch.int64)
        self.view_offsets = torch.tensor(self.offsets[:-1], dtype=torch.int64)
        self.distortion = (torch.tensor([[0.0] * 4 if v.distortion is None else list(v.distortion)
                                         for v in views], dtype=torch.float32)
                           if any(v.distortion is not None for v in views) else None)

    @property
    def pixel_count(self):
        return int(self.offsets[-1])

    def rays(self, flat_index, with_views=False):
        """Origins, unit directions (normalised space), RGB and mask of flat pixel indices; with
        `with_views`, also each ray's view (its index in the dataset's views)."""
        view = torch.searchsorted(self.view_offsets, flat_index, right=True) - 1
        local = flat_index - self.view_offsets[view]
        row, col = local // self.widths[view], local % self.widths[view]
        xy = (torch.stack([col, row], -1).float() + 0.5 - self.principal[view]) / self.focal[view]
        if self.distortion is not None:
            xy = torch.stack(undistort_points(xy[:, 0], xy[:, 1], *self.distortion[view].unbind(-1)), -1)
        cam = torch.cat([xy, torch.ones_like(xy[:, :1])], -1)
        dirs = torch.einsum("nij,nj->ni", self.rotations[view], cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        mask = self.mask[flat_index] if self.mask is not None else None
        if with_views:
            return self.origins[view], dirs, self.rgb[flat_index], mask, view
        return self.origins[view], dirs, self.rgb[flat_index], mask

    def sample(self, count, generator, with_views=False):
        return self.rays(torch.randint(0, self.pixel_count, (count,), generator=generator), with_views)
