"""Stand-in for `python -m engine export JOB [--faces N] [--texture PX] [--format glb|usd]` (the contract in
docs/design.md): plays the export's events and writes a real textured glTF binary (trimesh), or a USD
sequence (pxr), of a known mesh. The world positions it meant go to JOB/export_truth.json. Behaviour
chosen by $MARBLE_FAKE_MODE: ok; error (an error event, exit 2, nothing written); wait (waits for a line on
stdin in the bake phase: `cancel` removes what it wrote, prints cancelled, exit 3); bad (done, but the
.glb is damaged); plain (done, a .glb without texture coordinates or image)."""
import json, os, sys, time
import numpy as np

args = sys.argv[1:]
if args[:1] == ["doctor"]:
    print(json.dumps({"ok": True, "message": "fake engine ready"}))
    sys.exit(0)
def option(name, default=None):
    return args[args.index(name) + 1] if name in args else default

job = args[1]
faces, texture, fmt = int(option("--faces", "50000")), int(option("--texture", "2048")), option("--format", "glb")
mode = os.environ.get("MARBLE_FAKE_MODE", "ok")
with open(os.path.join(job, "export_argv.json"), "w") as f:
    json.dump({"argv": args, "cwd": os.getcwd()}, f)

def emit(kind, **fields):
    print(json.dumps(dict(event=kind, t=round(time.monotonic() % 1000, 3), **fields)), flush=True)

def icosphere(subdivisions):
    """A unit icosphere: 80 faces at 1, 320 at 2."""
    t = (1 + 5 ** 0.5) / 2
    v = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
         [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
         [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11],
         [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    v = [np.array(p, float) / np.linalg.norm(p) for p in v]
    for _ in range(subdivisions):
        middle, out = {}, []
        def mid(a, b):
            key = (min(a, b), max(a, b))
            if key not in middle:
                p = v[a] + v[b]
                v.append(p / np.linalg.norm(p))
                middle[key] = len(v) - 1
            return middle[key]
        for a, b, c in f:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            out += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        f = out
    return np.array(v), np.array(f)

CENTER, RADIUS = np.array([0.5, -0.2, 0.3]), 0.8
subdivisions = 1 if faces < 200 else 2
unit, triangles = icosphere(subdivisions)
world = CENTER + RADIUS * unit
uv = np.column_stack([0.5 + 0.5 * np.arctan2(unit[:, 1], unit[:, 0]) / np.pi, 0.5 + 0.5 * unit[:, 2]])
side = max(4, texture // 64)  # a small image whose size follows --texture

emit("stage", name="export")
phases = ("extract", "decimate", "unwrap", "bake", "write")
meshes = os.path.join(job, "meshes")
out = os.path.join(meshes, "sequence.usdc" if fmt == "usd" else "mesh_textured.glb")
if mode == "error":
    emit("error", message=f"{job}: the job has no checkpoint to export from (fake)")
    sys.exit(2)
for number, phase in enumerate(phases):
    for i in (1, 2):
        emit("progress", phase=phase, iteration=i, total=2, fraction=(number + i / 2) / len(phases))
    if phase == "bake" and mode == "wait":
        with open(out + ".partial", "wb") as f:
            f.write(b"work in progress")
        line = sys.stdin.readline()
        with open(os.path.join(job, "export_stdin.txt"), "w") as f:
            f.write(line)
        os.remove(out + ".partial")
        emit("cancelled", checkpoint=None, iteration=None)
        sys.exit(3)

with open(os.path.join(job, "export_truth.json"), "w") as f:
    json.dump({"world": world.tolist(), "faces": len(triangles), "texture": side}, f)
if fmt == "usd":
    from pxr import Usd, UsdGeom
    stage = Usd.Stage.CreateNew(out + ".tmp.usdc")
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    stage.SetStartTimeCode(1)
    stage.SetEndTimeCode(3)
    mesh = UsdGeom.Mesh.Define(stage, "/sequence")  # engine.export.usd.PRIM_PATH
    mesh.CreateFaceVertexCountsAttr([3] * len(triangles))
    mesh.CreateFaceVertexIndicesAttr(triangles.ravel().tolist())
    points = mesh.CreatePointsAttr()
    for frame in (1, 2, 3):
        points.Set([tuple(p + [0.1 * frame, 0.0, 0.0]) for p in world], frame)
    stage.GetRootLayer().Save()
    os.replace(out + ".tmp.usdc", out)
    emit("done", outputs={"export": out, "format": "usd", "frames": 3})
    sys.exit(0)

import trimesh
from PIL import Image
pixels = np.zeros((side, side, 3), np.uint8)
pixels[..., 0] = np.linspace(0, 255, side, dtype=np.uint8)[None, :]
pixels[..., 1] = 128
visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(pixels)) if mode != "plain" else None
# glTF is y up: the file holds (x, z, -y) of the world, which Blender's importer turns back into (x, y, z).
file_positions = np.column_stack([world[:, 0], world[:, 2], -world[:, 1]])
mesh = trimesh.Trimesh(file_positions, triangles, visual=visual, process=False)
data = mesh.export(file_type="glb")
if mode == "bad":
    data = data[:len(data) // 2]
with open(out + ".tmp", "wb") as f:
    f.write(data)
os.replace(out + ".tmp", out)
emit("done", outputs={"export": out, "format": "glb", "vertices": len(world), "faces": len(triangles),
                      "texture": None, "frame": None})
