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


def nearest_distances(a, b, chunk=4096):
    """For each point of a, the distance to the nearest point of b (exact, chunked brute force)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return torch.cat([torch.cdist(part, b).min(1).values for part in a.split(chunk)]).numpy()


def mesh_distances(pred_vertices, pred_faces, true_vertices, true_faces, samples=20000, seed=0):
    """Distances pred->true and true->pred between points sampled on both surfaces."""
    pred = sample_surface(pred_vertices, pred_faces, samples, seed)
    true = sample_surface(true_vertices, true_faces, samples, seed + 1)
    return nearest_distances(pred, true), nearest_distances(true, pred)


def bbox_diagonal(vertices):
    vertices = np.asarray(vertices, float)
    return float(np.linalg.norm(vertices.max(0) - vertices.min(0)))


def chamfer(pred_vertices, pred_faces, true_vertices, true_faces, samples=20000, seed=0):
    """Symmetric Chamfer distance (mean of the two mean nearest-point distances) between surfaces,
    as a fraction of the true surface's bounding-box diagonal."""
    to_true, to_pred = mesh_distances(pred_vertices, pred_faces, true_vertices, true_faces, samples, seed)
    return float(0.5 * (to_true.mean() + to_pred.mean()) / bbox_diagonal(true_vertices))


def fscore(pred_vertices, pred_faces, true_vertices, true_faces, threshold, samples=20000, seed=0):
    """F-score at `threshold` (a fraction of the true bounding-box diagonal): harmonic mean of the
    share of predicted points near the truth and of true points near the prediction."""
    to_true, to_pred = mesh_distances(pred_vertices, pred_faces, true_vertices, true_faces, samples, seed)
    tau = threshold * bbox_diagonal(true_vertices)
    precision, recall = (to_true < tau).mean(), (to_pred < tau).mean()
    return float(0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
