"""rigs: importing a 2,000-camera rig into Blender (`python3 build.py bench rigs`).

The measurement runs in the .venv, sandboxed: `python -m bench.rigs FOLDER [--cameras 2000]
[--repeats 3]` writes the rig into FOLDER, installs the extension and prints `RESULT {json}`.
"""
import argparse
import json
import math
import os
import statistics
import struct
import sys
import time
import zlib

from bench.harness import fmt, sandboxed_result, today
from bench.machine import machine_info
from tools.env import ensure_setup

SPEC = {
    "title": "rigs: importing a 2,000-camera rig into Blender",
    "columns": ["date", "cpu", "cores", "blender", "cameras", "transforms s", "transforms + images s",
                "colmap s", "colmap + images s", "read transforms s", "read colmap s"],
    "key": ["cpu", "cores", "blender", "cameras"],
}


def run(options):
    python = ensure_setup()
    result = sandboxed_result("rigs", lambda folder: [python, "-m", "bench.rigs", folder, "--cameras", "2000",
                                                      "--repeats", "3"])
    machine = machine_info()
    return {
        "date": today(),
        "cpu": machine["cpu"], "cores": str(machine["cores"]), "blender": result["blender"],
        "cameras": str(result["cameras"]),
        "transforms s": fmt(result["transforms bg=False"], 2), "transforms + images s": fmt(result["transforms bg=True"], 2),
        "colmap s": fmt(result["colmap bg=False"], 2), "colmap + images s": fmt(result["colmap bg=True"], 2),
        "read transforms s": fmt(result["read transforms"], 2), "read colmap s": fmt(result["read colmap"], 2),
    }


# ---------------------------------------------------------------------------------------------------
# in the .venv: numpy, the engine's rig module and bpy

def write_png(path, size=8):
    """A flat grey size x size RGB PNG (standard library and numpy)."""
    import numpy as np
    rows = np.full((size, 1 + 3 * size), 128, dtype=np.uint8)
    rows[:, 0] = 0

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b""))


def write_rig(folder, count):
    """`count` cameras on a sphere (golden spiral) looking at the origin, 8x8 photographs, one K per
    camera, as transforms.json and a COLMAP text model; returns {format: the file to import}."""
    import numpy as np
    from engine.io.rig import Rig, View, write_colmap_text, write_transforms

    dataset = os.path.join(folder, f"rig{count}")
    os.makedirs(os.path.join(dataset, "images"))
    views = []
    for i in range(count):
        z = 1.0 - 2.0 * (i + 0.5) / count
        a = i * math.pi * (3.0 - math.sqrt(5.0))
        eye = 4.0 * np.array([math.sqrt(1 - z * z) * math.cos(a), math.sqrt(1 - z * z) * math.sin(a), z])
        forward = -eye / np.linalg.norm(eye)
        right = np.cross(forward, [0.0, 0.0, 1.0] if abs(z) < 0.99 else [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(forward, right), forward, eye
        K = np.array([[9.0 + 0.001 * i, 0.0, 4.1], [0.0, 9.0 + 0.001 * i, 3.9], [0.0, 0.0, 1.0]])
        image = os.path.join(dataset, "images", f"view_{i:05d}.png")
        write_png(image)
        views.append(View(image_path=image, width=8, height=8, K=K, c2w=c2w))
    rig = Rig(name=os.path.basename(dataset), path=dataset, views=views)
    transforms = os.path.join(dataset, "transforms.json")
    write_transforms(rig, transforms)
    write_colmap_text(rig, os.path.join(dataset, "sparse", "0"))
    return {"transforms": transforms, "colmap": os.path.join(dataset, "sparse", "0", "cameras.txt")}


def measure(folder, count, repeats):
    from engine.io.rig import load_rig
    from tools.extension import install_extension
    sources = write_rig(folder, count)
    import bpy
    install_extension(bpy, os.path.join(folder, "dist"))
    result = {"cameras": count, "blender": bpy.app.version_string}
    for name, path in sources.items():
        reads = []
        for _ in range(repeats):
            started = time.perf_counter()
            assert len(load_rig(path).views) == count
            reads.append(time.perf_counter() - started)
        result[f"read {name}"] = statistics.median(reads)
        for background in (False, True):
            times = []
            for _ in range(repeats):
                bpy.ops.wm.read_homefile(use_empty=True)
                started = time.perf_counter()
                assert bpy.ops.marble.import_rig(filepath=path, background_images=background) == {"FINISHED"}
                times.append(time.perf_counter() - started)
                cameras = [o for o in bpy.context.scene.objects if o.type == "CAMERA"]
                assert len(cameras) == count, len(cameras)
                assert len(bpy.data.images) == (count if background else 0)
            result[f"{name} bg={background}"] = statistics.median(times)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.rigs", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="scratch folder (the rig and the extension zip go here)")
    parser.add_argument("--cameras", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print("RESULT " + json.dumps(measure(args.folder, args.cameras, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
