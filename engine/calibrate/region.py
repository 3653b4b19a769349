"""The region to reconstruct, from a calibration's sparse points: the object the cameras look at,
not the room around it (numpy only).

A photographer keeps the object near the middle of every picture, while the table's far edges, the
walls and the room drift to the borders or out of view. So each sparse point is scored by the share
of the cameras that see it near the middle of their picture (and in front of them); the points seen
centrally by most cameras are the object. Their robust centre (the median) and a trimmed radius (a
high quantile of their distances, outliers beyond it dropped) give the sphere, with a margin.
"""
import numpy as np

from ..io.region import estimate_region

CENTRAL = 0.35         # the middle of a picture: within CENTRAL x its width (height) of its centre
MIN_TRACK = 3          # points seen by fewer views are too uncertain to place the region
CORE_SHARE = 0.5       # points whose centrality is at least this share of the best point's are the object
QUANTILE = 0.98        # the object's radius: this quantile of its points' distances from its centre
MARGIN = 1.25          # and this much room around it (NeuS needs free space about the surface; the
                       # object's parts seen off-centre, like the box beside the tests' sphere, are caught)


def centrality(points, views):
    """Share of `views` (objects with K, c2w OpenCV, width, height) that see each point in front of
    them, within the middle of the picture (|x - cx| < CENTRAL * w and |y - cy| < CENTRAL * h)."""
    points = np.asarray(points, dtype=float)
    counts = np.zeros(len(points))
    for view in views:
        w2c = np.linalg.inv(np.asarray(view.c2w, dtype=float))
        cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        front = z > 1e-9
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (cam[:, :2] / np.where(front, z, 1.0)[:, None]) @ np.asarray(view.K, dtype=float)[:2, :2].T
        uv += np.asarray(view.K, dtype=float)[:2, 2]
        inside = (np.abs(uv[:, 0] - 0.5 * view.width) < CENTRAL * view.width) & \
                 (np.abs(uv[:, 1] - 0.5 * view.height) < CENTRAL * view.height)
        counts += front & inside
    return counts / max(len(views), 1)


def region_from_points(points, track_lengths, views):
    """(centre, radius, used) of the object the cameras look at; `used`: a boolean mask of the points
    taken as the object. Falls back to the cameras' common focus when the points are too few."""
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    tracks = np.asarray(track_lengths).reshape(-1)
    reliable = tracks >= MIN_TRACK
    if reliable.sum() < 20:
        reliable = tracks >= 2
    if reliable.sum() < 20:
        centre, radius = estimate_region([v.c2w for v in views])
        return centre, radius, np.zeros(len(points), bool)
    score = np.zeros(len(points))
    score[reliable] = centrality(points[reliable], views)
    core = reliable & (score >= CORE_SHARE * score.max())
    if core.sum() < 10:
        core = reliable & (score >= np.quantile(score[reliable], 0.75))
    centre = np.median(points[core], axis=0)
    distance = np.linalg.norm(points - centre, axis=1)
    # Trim the core's stragglers (a far point that happens to be seen centrally) before measuring it.
    d_core = distance[core]
    median = np.median(d_core)
    spread = np.median(np.abs(d_core - median)) * 1.4826
    kept = core & (distance <= median + 3.0 * max(spread, 1e-9))
    centre = np.median(points[kept], axis=0)
    distance = np.linalg.norm(points - centre, axis=1)
    radius = float(np.quantile(distance[kept], QUANTILE)) * MARGIN
    if not np.isfinite(radius) or radius <= 0:
        centre, radius = estimate_region([v.c2w for v in views])
        return centre, radius, np.zeros(len(points), bool)
    return centre, radius, kept
