"""Checks of a job's inputs before any work starts: cameras that can reconstruct something, a region
they see, images large enough after downscaling. Each problem is an InputError with the numbers."""
import numpy as np

from .config import InputError

MIN_IMAGE_PIXELS = 8        # a downscaled image's smaller side
MIN_REGION_PIXELS = 2.0     # the region's radius, in pixels, in the views that see it best
MIN_VIEWS_SEEING = 2        # views whose image holds the region's centre


def check_cameras(views, where):
    """At least two views, from at least two places."""
    if len(views) < 2:
        raise InputError(f"{where}: {len(views)} view: a surface cannot be reconstructed from one photograph; "
                         f"photograph the object from several directions")
    centres = np.array([np.asarray(v.c2w, dtype=float)[:3, 3] for v in views])
    spread = float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max())
    scale = max(1.0, float(np.abs(centres).max()))
    if spread <= 1e-6 * scale:
        raise InputError(f"{where}: all {len(views)} cameras are at the same place ({np.round(centres[0], 6).tolist()}): "
                         f"depth needs photographs from different positions")


def check_image_sizes(views, downscale, where):
    """Every image keeps at least MIN_IMAGE_PIXELS on its smaller side after `downscale`."""
    smallest = min(views, key=lambda v: min(v.width, v.height))
    side = min(smallest.width, smallest.height) // downscale
    if side < MIN_IMAGE_PIXELS:
        raise InputError(f"{where}: data.downscale {downscale} makes the {smallest.width}x{smallest.height} images "
                         f"{smallest.width // downscale}x{smallest.height // downscale} pixels; use a downscale of "
                         f"at most {max(1, min(smallest.width, smallest.height) // MIN_IMAGE_PIXELS)}")


def region_in_views(views, center, radius):
    """(views whose image holds the region's centre in front of the camera, the largest radius in
    pixels among them, cameras inside the region)."""
    center = np.asarray(center, dtype=float)
    seeing, pixels, inside = 0, 0.0, 0
    for view in views:
        c2w = np.asarray(view.c2w, dtype=float)
        local = c2w[:3, :3].T @ (center - c2w[:3, 3])
        distance = float(np.linalg.norm(center - c2w[:3, 3]))
        if distance < radius:
            inside += 1
        if local[2] <= 1e-12:
            continue
        K = np.asarray(view.K, dtype=float)
        u, v = (K[:2, :2] @ (local[:2] / local[2])) + K[:2, 2]
        if 0.0 <= u <= view.width and 0.0 <= v <= view.height:
            seeing += 1
            pixels = max(pixels, float(K[0, 0]) * radius / local[2])
    return seeing, pixels, inside


def check_region(views, center, radius, where):
    """The region must be seen by MIN_VIEWS_SEEING views, be at least MIN_REGION_PIXELS in radius in
    the best of them, and leave the cameras outside it (rays start outside the region)."""
    seeing, pixels, inside = region_in_views(views, center, radius)
    described = f"the region (centre {np.round(np.asarray(center, dtype=float), 6).tolist()}, radius {radius:.6g})"
    if inside > len(views) // 2:
        raise InputError(f"{where}: {described} holds {inside} of the {len(views)} cameras; it must be the "
                         f"object's surroundings, with the cameras outside it (a smaller radius)")
    if seeing < MIN_VIEWS_SEEING:
        raise InputError(f"{where}: {described} is in view of {seeing} of the {len(views)} cameras (its centre is "
                         f"in no other photograph); at least {MIN_VIEWS_SEEING} must see it: move it onto the object")
    if pixels < MIN_REGION_PIXELS:
        raise InputError(f"{where}: {described} is {pixels:.3g} pixels in radius at most in the photographs; "
                         f"at least {MIN_REGION_PIXELS:g} are needed: a larger radius")
