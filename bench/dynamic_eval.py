"""A dynamic job's sequence against the synthetic dynamic scene's truth (demo.dynamic_scene):
`python -m bench.dynamic_eval JOB/meshes/sequence.json DATASET` prints one JSON line.

Per frame: Chamfer distance and F-scores of its mesh (brought to world coordinates when the sequence
is canonical) against the frame's true surface, in fractions of the true bounding-box diagonal
(bench.meshes.surface_metrics); the error of its predicted world_from_canonical against the true rigid
motion from the job's first frame: the rotation's angle in degrees, and how far the first frame's
object centre lands from where it truly goes, in fractions of the scene size (the first frame's true
bounding-box diagonal).

The object's frame is not the only rigid motion there is to compare with: a deformation has a rigid part
of its own (a wave across the ring tilts it), which no estimate of a rigid motion from images can tell
from the object's turning. So each frame is also compared with the surface's own rigid motion, the
rigid transform that best maps the first frame's true surface onto the frame's (least squares over the
corresponding vertices of the true meshes, weighted by their area: `surface_fit`); `fit_deg` says how far
that is from the object's frame (the deformation's rigid part).
"""
import json
import os
import sys
import tempfile

import numpy as np

from bench.meshes import surface_metrics
from engine.io.ply import read_triangles, write_ply
from engine.train.motion import rotation_error_deg


def vertex_areas(vertices, faces):
    """A third of the area of each vertex's triangles (the weights of a surface integral)."""
    edges = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    areas = 0.5 * np.linalg.norm(edges, axis=1)
    weights = np.zeros(len(vertices))
    for corner in range(3):
        np.add.at(weights, faces[:, corner], areas / 3.0)
    return weights


def surface_fit(source, target, weights):
    """The rigid transform (4x4) that best maps the points `source` onto the corresponding `target` in
    weighted least squares (Kabsch), or None when they do not correspond one to one."""
    if source.shape != target.shape or weights.sum() <= 0:
        return None
    w = weights / weights.sum()
    source_mean, target_mean = w @ source, w @ target
    covariance = ((source - source_mean) * w[:, None]).T @ (target - target_mean)
    u, _, vt = np.linalg.svd(covariance)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    m = np.eye(4)
    m[:3, :3] = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    m[:3, 3] = target_mean - m[:3, :3] @ source_mean
    return m


def sequence_metrics(sequence_path, dataset, samples=20000):
    with open(sequence_path, encoding="utf-8") as f:
        sequence = json.load(f)
    with open(os.path.join(dataset, "truth", "motion.json"), encoding="utf-8") as f:
        motion = json.load(f)
    truth_motion = {m["frame"]: np.array(m["world_from_canonical"]) for m in motion["frames"]}
    entries = sorted(sequence["frames"], key=lambda e: e["frame"])
    first = entries[0]["frame"]
    truth_path = lambda frame: os.path.join(dataset, "truth", f"frame_{frame:06d}.ply")
    first_vertices, first_faces, _ = read_triangles(truth_path(first))
    center = (first_vertices.min(0) + first_vertices.max(0)) / 2
    weights = vertex_areas(first_vertices, first_faces)
    frames = []
    for entry in entries:
        frame = entry["frame"]
        predicted = np.array(entry["world_from_canonical"])
        truth = truth_motion[frame] @ np.linalg.inv(truth_motion[first])
        mesh = os.path.join(os.path.dirname(sequence_path), entry["mesh"])
        with tempfile.TemporaryDirectory() as scratch:
            if sequence.get("coordinates") == "canonical":
                vertices, faces, colors = read_triangles(mesh)
                mesh = os.path.join(scratch, "world.ply")
                write_ply(mesh, vertices @ predicted[:3, :3].T + predicted[:3, 3], faces, colors)
            surface = surface_metrics(mesh, truth_path(frame), samples=samples)
        moved = lambda m: m[:3, :3] @ center + m[:3, 3]
        fit = surface_fit(first_vertices, read_triangles(truth_path(frame))[0], weights)
        against_fit = {} if fit is None else {
            "rotation_fit_deg": rotation_error_deg(predicted[:3, :3], fit[:3, :3]),
            "translation_fit": float(np.linalg.norm(moved(predicted) - moved(fit)) / motion["scene_size"]),
            "fit_deg": rotation_error_deg(fit[:3, :3], truth[:3, :3])}
        frames.append({"frame": frame, "seconds": entry.get("seconds"), "chamfer": surface["chamfer"],
                       "f_05": surface["f_05"], "f_1": surface["f_1"],
                       "rotation_deg": rotation_error_deg(predicted[:3, :3], truth[:3, :3]),
                       "translation": float(np.linalg.norm(moved(predicted) - moved(truth)) / motion["scene_size"]),
                       **against_fit})
    return {"frames": frames, "scene_size": motion["scene_size"], "cameras": motion["cameras"],
            "size": motion["size"]}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m bench.dynamic_eval SEQUENCE_JSON DATASET", file=sys.stderr)
        return 2
    print(json.dumps(sequence_metrics(*argv)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
