"""The region to reconstruct, estimated from the cameras alone: the point nearest every optical axis
and a sphere around it (numpy only: the add-on's region empty and the engine's normalisation without
masks both start from it)."""
import numpy as np


def estimate_region(c2ws):
    """(centre, radius) from OpenCV camera-to-world matrices: the point nearest all optical axes in
    the least-squares sense, and half the median camera distance to it.

    When the axes are (nearly) parallel (a single camera, a forward-facing capture) there is no such
    point: the centre is then put in front of the cameras at a distance of the cameras' spread (or 1).
    """
    c2ws = np.asarray(c2ws, dtype=float).reshape(-1, 4, 4)
    centres, axes = c2ws[:, :3, 3], c2ws[:, :3, 2]
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    projectors = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]  # onto each axis' normal plane
    A = projectors.sum(axis=0)
    b = np.einsum("nij,nj->i", projectors, centres)
    eigen = np.linalg.eigvalsh(A)
    centre = None
    if len(c2ws) > 1 and eigen[0] > 1e-3 * eigen[-1]:
        centre = np.linalg.solve(A, b)
        # The point must be in front of the cameras, not behind them (cameras looking outwards).
        if np.mean(np.einsum("ni,ni->n", centre[None] - centres, axes) > 0) < 0.5:
            centre = None
    if centre is None:
        spread = float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max()) if len(centres) > 1 else 0.0
        distance = spread if spread > 1e-9 else 1.0
        direction = axes.mean(axis=0)
        norm = np.linalg.norm(direction)
        direction = direction / norm if norm > 1e-9 else axes[0]
        centre = centres.mean(axis=0) + distance * direction
        return centre, 0.5 * distance
    radius = 0.5 * float(np.median(np.linalg.norm(centres - centre, axis=1)))
    return centre, (radius if radius > 1e-9 else 1.0)


def sphere_matrix(centre, radius):
    """4x4 mapping the unit sphere onto the sphere (centre, radius)."""
    matrix = np.diag([radius, radius, radius, 1.0])
    matrix[:3, 3] = centre
    return matrix


def initial_region(rig):
    """(4x4 unit-sphere -> world, automatic, warnings) for a rig: its normalisation when usable."""
    warnings = []
    normalization = getattr(rig, "normalization", None)
    if normalization is not None:
        matrix = np.asarray(normalization, dtype=float)
        if (matrix.shape == (4, 4) and np.isfinite(matrix).all()
                and abs(np.linalg.det(matrix[:3, :3])) > 1e-12 and np.allclose(matrix[3], [0, 0, 0, 1])):
            return matrix, False, warnings
        warnings.append(f"{rig.path}: the rig's normalisation is not a usable 4x4 similarity; the region "
                        f"is estimated from the cameras instead")
    centre, radius = estimate_region([v.c2w for v in rig.views])
    return sphere_matrix(centre, radius), True, warnings
