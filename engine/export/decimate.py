"""Mesh reduction and clean-up for export: quadric decimation (fast-simplification), vertex normals."""
import numpy as np


def decimate(vertices, faces, target_faces):
    """About `target_faces` triangles by quadric edge collapse (Garland-Heckbert, fast-simplification);
    a mesh already at or below the target comes back as it is (cleaned). Returns float64 vertices and
    int64 faces, without degenerate faces or unused vertices."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if target_faces < len(faces):
        import fast_simplification

        reduction = 1.0 - target_faces / len(faces)
        vertices, faces = fast_simplification.simplify(vertices.astype(np.float32), faces.astype(np.int32),
                                                       target_reduction=reduction, agg=7.0)
    return clean(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64))


def clean(vertices, faces):
    """Drop faces with a repeated corner and vertices no face uses (indices renumbered)."""
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    used, inverse = np.unique(faces, return_inverse=True)
    return vertices[used], inverse.reshape(-1, 3).astype(np.int64)


def vertex_normals(vertices, faces):
    """Unit area-weighted vertex normals (the faces' winding gives the outside)."""
    corners = vertices[faces]
    weighted = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # length: 2 x area
    normals = np.stack([np.bincount(faces.reshape(-1), np.repeat(weighted[:, k], 3), minlength=len(vertices))
                        for k in range(3)], axis=1)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.where(length > 1e-20, normals / np.maximum(length, 1e-20), np.array([0.0, 0.0, 1.0]))
