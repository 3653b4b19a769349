"""Geometric accuracy: Chamfer distance and F-score between two triangle meshes."""
import numpy as np
import torch


def sample_surface(vertices, faces, count, seed=0):
    """`count` points spread uniformly by area over a triangle mesh."""
    vertices, faces = np.asarray(vertices, float), np.asarray(faces, np.int64)
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(faces), size=count, p=area / area.sum())
    r1, r2 = rng.random(count), rng.random(count)
    s = np.sqrt(r1)
    a, b, c = 1 - s, s * (1 - r2), s * r2
    t = tri[pick]
    return a[:, None] * t[:, 0] + b[:, None] * t[:, 1] + c[:, None] * t[:, 2]


def point_triangle_distances(points, triangles):
    """Distance from points (N, 3) to triangles (N, K, 3, 3), elementwise over K candidates: (N, K)."""
    p = points[:, None, :]
    a, b, c = triangles[:, :, 0], triangles[:, :, 1], triangles[:, :, 2]
    n = torch.cross(b - a, c - a, dim=-1)
    n_len = n.norm(dim=-1, keepdim=True)
    n_hat = n / n_len.clamp_min(1e-30)
    height = ((p - a) * n_hat).sum(-1)
    q = p - height[..., None] * n_hat
    # q is inside when it lies on the inner side of all three edges.
    inside = ((torch.cross(b - a, q - a, dim=-1) * n).sum(-1) >= 0) & \
             ((torch.cross(c - b, q - b, dim=-1) * n).sum(-1) >= 0) & \
             ((torch.cross(a - c, q - c, dim=-1) * n).sum(-1) >= 0) & (n_len[..., 0] > 0)

    def segment(u, v):
        d = v - u
        t = (((p - u) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-30)).clamp(0, 1)
        return (p - (u + t[..., None] * d)).norm(dim=-1)

    edges = torch.minimum(torch.minimum(segment(a, b), segment(b, c)), segment(c, a))
    return torch.where(inside, height.abs(), edges)


def surface_distances(points, vertices, faces, candidates=16, chunk=8192):
    """Distance from each point to the nearest triangle of a mesh: exact point-triangle distances to
    the `candidates` triangles whose centroids are nearest (found with a k-d tree)."""
    from scipy.spatial import cKDTree

    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    k = min(candidates, len(tri))
    _, nearest = cKDTree(tri.mean(1)).query(np.asarray(points, dtype=np.float64), k=k)
    nearest = nearest.reshape(len(points), k)
    points_t, tri_t = torch.as_tensor(np.asarray(points, dtype=np.float64)), torch.as_tensor(tri)
    nearest_t = torch.as_tensor(nearest)
    out = [point_triangle_distances(points_t[i:i + chunk], tri_t[nearest_t[i:i + chunk]]).min(1).values
           for i in range(0, len(points_t), chunk)]
    return torch.cat(out).numpy()


def mesh_distances(pred_vertices, pred_faces, true_vertices, true_faces, samples=20000, seed=0):
    """Distances from points sampled on each surface to the other surface: pred->true, true->pred."""
    pred = sample_surface(pred_vertices, pred_faces, samples, seed)
    true = sample_surface(true_vertices, true_faces, samples, seed + 1)
    return (surface_distances(pred, true_vertices, true_faces),
            surface_distances(true, pred_vertices, pred_faces))


def bbox_diagonal(vertices):
    vertices = np.asarray(vertices, float)
    return float(np.linalg.norm(vertices.max(0) - vertices.min(0)))


def chamfer(pred_vertices, pred_faces, true_vertices, true_faces, samples=20000, seed=0):
    """Symmetric Chamfer distance between two surfaces, as a fraction of the true surface's
    bounding-box diagonal: the mean of (mean distance from points sampled on the prediction to the
    true surface) and (mean distance from points sampled on the truth to the predicted surface)."""
    to_true, to_pred = mesh_distances(pred_vertices, pred_faces, true_vertices, true_faces, samples, seed)
    return float(0.5 * (to_true.mean() + to_pred.mean()) / bbox_diagonal(true_vertices))


def fscore(pred_vertices, pred_faces, true_vertices, true_faces, threshold, samples=20000, seed=0):
    """F-score at `threshold` (a fraction of the true bounding-box diagonal): harmonic mean of the
    share of predicted points near the truth and of true points near the prediction."""
    to_true, to_pred = mesh_distances(pred_vertices, pred_faces, true_vertices, true_faces, samples, seed)
    tau = threshold * bbox_diagonal(true_vertices)
    precision, recall = (to_true < tau).mean(), (to_pred < tau).mean()
    return float(0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
