"""The sequences `bench sequence` and `bench.sequence_versions` import, written in the .venv (numpy, the
engine's PLY writer, usd-core for the USD file): `python -m bench.sequence_data FOLDER [--frames N]
[--vertices V] [--small]`.

FOLDER/meshes gets frame_NNNNNN.ply + sequence.json (as a dynamic job writes them) and sequence.usdc
(engine.export.usd from them), FOLDER/expect.json what Blender must show at every frame of the range
(vertex count, bounding box in world coordinates). The default is a rippling, turning torus of about
V vertices per frame (every file different, one topology); --small is a few frames of changing
topology with a gap, in canonical coordinates, for checking Blender versions exactly. Prints one line
`RESULT {json}` (seconds and MiB written per form).
"""
import argparse
import json
import math
import os
import sys
import time


def torus_grid(vertices):
    """(u, v) of demo.scene's torus grid with about `vertices` vertices, and its triangles (closed, no
    seams)."""
    from demo.geometry import torus_parameters, torus_triangles
    rings = max(3, int(round(math.sqrt(vertices / 2.0))))
    segments = max(3, vertices // rings)
    u, v, quads = torus_parameters(segments, rings)
    return u, v, torus_triangles(quads)


def torus_frames(frames, vertices):
    """(frame, points, faces, colours 0-1, world_from_canonical) of the rippling, turning torus."""
    import numpy as np

    u, v, faces = torus_grid(vertices)
    colours = np.stack([np.sin(3 * u), np.cos(2 * v), np.sin(u + v)], -1) * 0.4 + 0.5
    for frame in range(frames):
        minor = 0.25 + 0.03 * np.sin(6 * u + 0.3 * frame)
        points = np.stack([(0.6 + minor * np.cos(v)) * np.cos(u), (0.6 + minor * np.cos(v)) * np.sin(u),
                           minor * np.sin(v)], -1)
        angle = 0.02 * frame
        turn = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
        matrix = np.eye(4)
        matrix[:3, :3] = turn
        yield frame + 1, points @ turn.T, faces, colours, matrix


SMALL_FRAMES = (1, 2, 3, 5, 6, 9, 10)  # gaps after 3, 6 and 9's predecessor


def small_frames():
    """A few frames of changing topology (icosphere, subdivided once on some frames, or a box), moved,
    turned and scaled by world_from_canonical (canonical coordinates)."""
    import numpy as np

    t = (1.0 + 5.0 ** 0.5) / 2.0
    ico = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
                    [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=float) / math.hypot(1, t)
    ico_faces = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                          [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
                          [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    box = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    box_faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],
                          [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    for k, frame in enumerate(SMALL_FRAMES):
        if k % 3 == 2:
            points, faces = box * (1 + 0.2 * k), box_faces
        else:
            points, faces = ico * (0.5 + 0.1 * k), ico_faces
            if k % 3 == 1:  # one more vertex per face: a different count on the same outline
                centres = points[faces].mean(1)
                n = len(points)
                points = np.concatenate([points, centres])
                faces = np.concatenate([[[a, b, n + i], [b, c, n + i], [c, a, n + i]]
                                        for i, (a, b, c) in enumerate(faces)])
        colours = np.tile([[k / 8.0, 0.5, 1.0 - k / 8.0]], (len(points), 1))
        angle = 0.5 * k
        matrix = np.eye(4)
        matrix[:3, :3] = np.array([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0],
                                   [-math.sin(angle), 0, math.cos(angle)]]) * (1.0 + 0.1 * k)
        matrix[:3, 3] = [0.3 * frame, -0.2 * frame, 1.0]
        yield frame, points, faces, colours, matrix


def write(folder, frames, coordinates):
    """The PLYs, sequence.json, expect.json (and the seconds it took) from (frame, points, faces,
    colours, matrix) tuples; the meshes are canonical (placed by the matrix) or world already."""
    import numpy as np
    from engine.io import protocol
    from engine.io.ply import write_ply

    meshes = os.path.join(folder, protocol.MESHES_DIR)
    os.makedirs(meshes, exist_ok=True)
    entries, expect, size, vertices, faces_max = [], {}, 0, 0, 0
    started = time.perf_counter()
    for frame, points, faces, colours, matrix in frames:
        name = protocol.FRAME_MESH_FILE.format(frame)
        path = os.path.join(meshes, name)
        write_ply(path, points, faces, colours)
        size += os.path.getsize(path)
        entries.append({"frame": frame, "mesh": name, "world_from_canonical": matrix.tolist(), "seconds": 1.0})
        world = points @ matrix[:3, :3].T + matrix[:3, 3] if coordinates == "canonical" else points
        world = world.astype(np.float32).astype(np.float64)  # what the file holds
        expect[frame] = [len(points), world.min(0).tolist(), world.max(0).tolist()]
        vertices, faces_max = max(vertices, len(points)), max(faces_max, len(faces))
    sequence = os.path.join(meshes, protocol.SEQUENCE_FILE)
    with open(sequence, "w", encoding="utf-8") as f:
        json.dump({"coordinates": coordinates, "frames": entries}, f)
    seconds = time.perf_counter() - started
    known = sorted(expect)  # a gap shows the last mesh before it
    every = {f: expect[max(k for k in known if k <= f)] for f in range(known[0], known[-1] + 1)}
    with open(os.path.join(folder, "expect.json"), "w", encoding="utf-8") as f:
        json.dump({"frames": [known[0], known[-1]], "expect": {str(k): v for k, v in every.items()}}, f)
    return sequence, seconds, size, vertices, faces_max


def peak_rss_mib():
    """The process's peak resident memory (VmHWM), MiB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.sequence_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--vertices", type=int, default=50000)
    parser.add_argument("--small", action="store_true", help="the few-frame, changing-topology check sequence")
    args = parser.parse_args(argv)
    from engine.export.usd import write_usd_sequence
    from engine.io.protocol import USD_SEQUENCE_FILE

    if args.small:
        sequence, ply_s, ply_bytes, vertices, faces = write(args.folder, small_frames(), "canonical")
    else:
        sequence, ply_s, ply_bytes, vertices, faces = write(args.folder, torus_frames(args.frames, args.vertices),
                                                            "world")
    usd = os.path.join(os.path.dirname(sequence), USD_SEQUENCE_FILE)
    from pxr import Usd  # noqa: F401 (loading usd-core's libraries is not the writing)
    started = time.perf_counter()
    result = write_usd_sequence(sequence, usd)
    usd_s = time.perf_counter() - started
    print("RESULT " + json.dumps({
        "frames": result["frames"], "vertices": vertices, "faces": faces, "ply_s": ply_s,
        "ply_mib": ply_bytes / 2 ** 20, "usd_s": usd_s, "usd_mib": os.path.getsize(usd) / 2 ** 20,
        "sequence": sequence, "usd": usd, "peak_rss_mib": peak_rss_mib()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
