"""sequence: importing a long mesh sequence into Blender (`python3 build.py bench sequence`, also run
by `bench dynamic`).

The measurement, `python -m bench.sequence [--frames 300] [--vertices 50000]`, runs in the .venv: it
writes a sequence like a dynamic job's (JOB/meshes/sequence.json and one binary PLY with vertex
colours per frame; a torus that ripples and turns, so every file is different), installs the
extension into a sandboxed Blender (the bpy module) and times marble.import_sequence on an empty
scene. Checks that one object is visible at sampled frames. Prints one line `RESULT {json}`.
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

from bench.harness import fmt, sandboxed_result, today
from bench.machine import machine_info
from tools.env import ensure_setup

SPEC = {
    "title": "sequence: importing a long mesh sequence into Blender",
    "columns": ["date", "cpu", "cores", "blender", "frames", "vertices", "faces", "MiB", "import s"],
    "key": ["cpu", "cores", "blender", "frames", "vertices"],
}


def run(options):
    python = ensure_setup()
    result = sandboxed_result("sequence", lambda folder: [python, "-m", "bench.sequence"])
    machine = machine_info()
    return {
        "date": today(), "cpu": machine["cpu"], "cores": str(machine["cores"]),
        "blender": result["blender"], "frames": str(result["frames"]), "vertices": str(result["vertices"]),
        "faces": str(result["faces"]), "MiB": fmt(result["mib"], 0), "import s": fmt(result["import_s"], 2),
    }


# ---------------------------------------------------------------------------------------------------
# in the .venv: numpy, the engine's file formats and bpy

def torus_grid(vertices):
    """(u, v) of demo.scene's torus grid with about `vertices` vertices, and its triangles (closed, no
    seams)."""
    from demo.geometry import torus_parameters, torus_triangles
    rings = max(3, int(round(math.sqrt(vertices / 2.0))))
    segments = max(3, vertices // rings)
    u, v, quads = torus_parameters(segments, rings)
    return u, v, torus_triangles(quads)


def write_sequence(folder, frames, vertices):
    """One PLY per frame (a rippling torus, turned a little per frame) and sequence.json in world
    coordinates; returns (sequence.json path, vertex count, face count, bytes written)."""
    import numpy as np
    from engine.io import protocol
    from engine.io.ply import write_ply

    os.makedirs(folder, exist_ok=True)
    u, v, faces = torus_grid(vertices)
    colors = (np.stack([np.sin(3 * u), np.cos(2 * v), np.sin(u + v)], -1) * 0.4 + 0.5) * 255
    entries, size = [], 0
    for frame in range(frames):
        minor = 0.25 + 0.03 * np.sin(6 * u + 0.3 * frame)
        points = np.stack([(0.6 + minor * np.cos(v)) * np.cos(u), (0.6 + minor * np.cos(v)) * np.sin(u),
                           minor * np.sin(v)], -1)
        angle = 0.02 * frame
        turn = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
        name = protocol.FRAME_MESH_FILE.format(frame)
        path = os.path.join(folder, name)
        write_ply(path, points @ turn.T, faces, colors.astype(np.uint8))
        size += os.path.getsize(path)
        matrix = np.eye(4)
        matrix[:3, :3] = turn
        entries.append({"frame": frame + 1, "mesh": name, "world_from_canonical": matrix.tolist(), "seconds": 1.0})
    path = os.path.join(folder, protocol.SEQUENCE_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"coordinates": "world", "frames": entries}, f)
    return path, len(u), len(faces), size


def measure(args, folder):
    import bpy
    from demo.run import install, say

    started = time.perf_counter()
    sequence, vertices, faces, size = write_sequence(os.path.join(folder, "meshes"), args.frames, args.vertices)
    say(f"wrote {args.frames} meshes of {vertices} vertices ({size / 2 ** 20:.0f} MiB) in "
        f"{time.perf_counter() - started:.1f} s")
    install(bpy)
    bpy.ops.wm.read_homefile(use_empty=True)
    started = time.perf_counter()
    if bpy.ops.marble.import_sequence(filepath=sequence) != {"FINISHED"}:
        raise RuntimeError("marble.import_sequence failed")
    seconds = time.perf_counter() - started
    scene = bpy.context.scene
    objects = [o for o in scene.objects if o.type == 'MESH']
    if len(objects) != args.frames:
        raise RuntimeError(f"{len(objects)} objects for {args.frames} frames")
    for frame in sorted({1, args.frames // 2, args.frames}):
        scene.frame_set(frame)
        shown = [o for o in objects if not o.hide_viewport and not o.hide_render]
        if len(shown) != 1:
            raise RuntimeError(f"{len(shown)} objects visible at frame {frame}")
    return {"blender": bpy.app.version_string, "frames": args.frames, "vertices": vertices, "faces": faces,
            "mib": size / 2 ** 20, "import_s": seconds}


def main(argv=None):
    from demo.run import say
    from tools.sandbox import enter_sandbox

    parser = argparse.ArgumentParser(prog="python -m bench.sequence", description=__doc__.split("\n\n")[1])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--vertices", type=int, default=50000)
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="marble-sequence-bench-")
    sandbox = enter_sandbox("marble-sequence-bench-")  # before bpy is imported
    try:
        result = measure(args, folder)
    finally:
        for path in filter(None, (folder, sandbox)):
            shutil.rmtree(path, ignore_errors=True)
    say(f"imported {result['frames']} frames of {result['vertices']} vertices in {result['import_s']:.2f} s")
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
