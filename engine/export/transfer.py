"""Colours carried from a dense coloured mesh onto points near it: a dynamic frame's export, whose
network is not kept, bakes the colours of its frame's dense mesh."""
import numpy as np


class DenseColors:
    """colour(points, normals) of the nearest point of a dense mesh with vertex colours: the nearest
    vertex (k-d tree) gives the candidate triangles (those around it); the point is projected onto
    each one's plane, its barycentric coordinates clamped into the triangle, and the closest result's
    interpolated colour is taken."""

    def __init__(self, vertices, faces, colors):
        from scipy.spatial import cKDTree

        self.vertices = np.asarray(vertices, dtype=np.float64)
        self.faces = np.asarray(faces, dtype=np.int64)
        self.colors = np.asarray(colors, dtype=np.float64)
        self.tree = cKDTree(self.vertices)
        corner_vertex = self.faces.reshape(-1)
        order = np.argsort(corner_vertex, kind="stable")
        counts = np.bincount(corner_vertex, minlength=len(self.vertices))
        starts = np.cumsum(counts) - counts
        slot = np.arange(len(order)) - np.repeat(starts, counts)
        self.around = np.full((len(self.vertices), max(1, int(counts.max(initial=1)))), -1, dtype=np.int64)
        self.around[corner_vertex[order], slot] = order // 3   # the faces around each vertex, -1 padded

    def __call__(self, points, normals=None):
        points = np.asarray(points, dtype=np.float64)
        _, nearest = self.tree.query(points)
        candidates = self.around[nearest]                                          # (n, k)
        valid = candidates >= 0
        corners = self.vertices[self.faces[np.where(valid, candidates, 0)]]        # (n, k, 3, 3)
        weights = clamped_barycentric(points[:, None, :], corners)                 # (n, k, 3)
        closest = (corners * weights[..., None]).sum(axis=2)
        distance = np.where(valid, np.linalg.norm(closest - points[:, None, :], axis=2), np.inf)
        best = distance.argmin(axis=1)
        rows = np.arange(len(points))
        face = self.faces[candidates[rows, best]]
        return (self.colors[face] * weights[rows, best][..., None]).sum(axis=1)


def clamped_barycentric(points, corners):
    """Barycentric coordinates of `points` projected onto the triangles' planes, clamped to the
    triangle (negative weights set to 0, renormalised); degenerate triangles give their first corner."""
    a, b, c = corners[..., 0, :], corners[..., 1, :], corners[..., 2, :]
    v0, v1, v2 = b - a, c - a, points - a
    d00, d01, d11 = (v0 * v0).sum(-1), (v0 * v1).sum(-1), (v1 * v1).sum(-1)
    d20, d21 = (v2 * v0).sum(-1), (v2 * v1).sum(-1)
    denominator = d00 * d11 - d01 * d01
    safe = np.where(np.abs(denominator) > 1e-30, denominator, 1.0)
    v = (d11 * d20 - d01 * d21) / safe
    w = (d00 * d21 - d01 * d20) / safe
    weights = np.stack([1.0 - v - w, v, w], axis=-1)
    weights = np.where((np.abs(denominator) > 1e-30)[..., None], weights, np.array([1.0, 0.0, 0.0]))
    weights = np.clip(weights, 0.0, None)
    return weights / np.maximum(weights.sum(-1, keepdims=True), 1e-20)
