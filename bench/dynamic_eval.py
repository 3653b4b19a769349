"""A dynamic job's sequence against the synthetic dynamic scene's truth (demo.dynamic_scene):
`python -m bench.dynamic_eval JOB/meshes/sequence.json DATASET` prints one JSON line.

Per frame: Chamfer distance and F-scores of its mesh (brought to world coordinates when the sequence
is canonical) against the frame's true surface, in fractions of the true bounding-box diagonal
(bench.meshes.surface_metrics); the error of its predicted world_from_canonical against the true rigid
motion from the job's first frame: the rotation's angle in degrees, and how far the first frame's
object centre lands from where it truly goes, in fractions of the scene size (the first frame's true
bounding-box diagonal).
"""
import json
import os
import sys
import tempfile

import numpy as np

from bench.meshes import surface_metrics
from engine.io.ply import read_triangles, write_ply
from engine.train.motion import rotation_error_deg


def sequence_metrics(sequence_path, dataset, samples=20000):
    with open(sequence_path, encoding="utf-8") as f:
        sequence = json.load(f)
    with open(os.path.join(dataset, "truth", "motion.json"), encoding="utf-8") as f:
        motion = json.load(f)
    truth_motion = {m["frame"]: np.array(m["world_from_canonical"]) for m in motion["frames"]}
    entries = sorted(sequence["frames"], key=lambda e: e["frame"])
    first = entries[0]["frame"]
    truth_path = lambda frame: os.path.join(dataset, "truth", f"frame_{frame:06d}.ply")
    first_vertices, _, _ = read_triangles(truth_path(first))
    center = (first_vertices.min(0) + first_vertices.max(0)) / 2
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
        frames.append({"frame": frame, "seconds": entry.get("seconds"), "chamfer": surface["chamfer"],
                       "f_05": surface["f_05"], "f_1": surface["f_1"],
                       "rotation_deg": rotation_error_deg(predicted[:3, :3], truth[:3, :3]),
                       "translation": float(np.linalg.norm(moved(predicted) - moved(truth)) / motion["scene_size"])})
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
