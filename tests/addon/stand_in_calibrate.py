"""Stand-in for `python -m engine calibrate --images PATH --out DATASET` (the contract in
docs/design.md): plays the calibration's events and writes a small valid dataset (transforms.json
with four cameras and a normalization, images/, points3D.ply), and the truth it was made from in
truth.json in the working folder (the job folder). Behaviour chosen by $MARBLE_FAKE_MODE: ok, error
(an error event, exit 2, nothing written), wait (waits for a line on stdin after the features phase:
`cancel` removes DATASET, prints cancelled, exit 3), die (exits 1 without a final event), badpoints
(done, but points3D.ply is truncated)."""
import json, os, shutil, struct, sys, time, zlib
import numpy as np

args = sys.argv[1:]
if args[:1] == ["doctor"]:
    print(json.dumps({"ok": True, "message": "fake engine ready"}))
    sys.exit(0)
def option(name):
    return args[args.index(name) + 1] if name in args else None

images, out = option("--images"), option("--out")
mode = os.environ.get("MARBLE_FAKE_MODE", "ok")
with open("argv.json", "w") as f:
    json.dump({"argv": args, "cwd": os.getcwd()}, f)
log = []

def emit(kind, **fields):
    event = dict(event=kind, t=round(time.monotonic() % 1000, 3), **fields)
    log.append(event)
    if kind == "done":  # the dataset's events.jsonl, complete before its done is printed
        with open(os.path.join(out, "events.jsonl"), "w") as f:
            f.write("".join(json.dumps(e) + "\n" for e in log))
    print(json.dumps(event), flush=True)

def png(path, width, height, rgb):
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

def look_at(eye, target):
    """OpenCV camera-to-world (x right, y down, z forward) at `eye` looking at `target`, z up."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0]); x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, np.cross(z, x), z, eye
    return c2w

WIDTH, HEIGHT, FOCAL = 64, 48, 60.0
CENTER, RADIUS = np.array([0.5, -0.2, 0.3]), 1.2
K = [[FOCAL, 0.0, WIDTH / 2], [0.0, FOCAL, HEIGHT / 2], [0.0, 0.0, 1.0]]
cameras = {f"IMG_{i:04d}": look_at(CENTER + [3.0 * np.cos(a), 3.0 * np.sin(a), 0.8], CENTER)
           for i, a in enumerate(np.linspace(0.0, 2.0 * np.pi, 4, endpoint=False) + 0.3)}
points = CENTER + np.array([[0, 0, 0], [0.3, 0, 0], [0, 0.3, 0], [0, 0, 0.3], [-0.2, 0.1, -0.25]], dtype=np.float32)
colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [10, 20, 30]], dtype=np.uint8)

print("fake calibrate: starting", file=sys.stderr, flush=True)
emit("started", command="calibrate", images=images, out=out, count=len(cameras),
     video=os.path.isfile(images))
if mode == "error":
    emit("error", message=f"{images}: too few photographs to calibrate (fake)")
    sys.exit(2)
phases = (("read", 4), ("features", 4), ("matching", 6), ("mapping", 4), ("write", 4))
done = 0.0
for number, (phase, total) in enumerate(phases):
    emit("stage", name="calibrate", phase=phase)
    for i in range(1, total + 1):
        fraction = (number + i / total) / len(phases)
        emit("progress", phase=phase, iteration=i, total=total, eta_s=round(100.0 * (1.0 - fraction), 3),
             fraction=fraction)
    if phase == "features" and mode == "die":
        print("Traceback (most recent call last):\nRuntimeError: fake calibrate crashed", file=sys.stderr, flush=True)
        sys.exit(1)
    if phase == "features" and mode == "wait":
        os.makedirs(os.path.join(out, "images"), exist_ok=True)  # work in progress, removed on cancel
        line = sys.stdin.readline()
        with open("stdin.txt", "w") as f:
            f.write(line)
        shutil.rmtree(out, ignore_errors=True)
        emit("cancelled", checkpoint=None, iteration=None)
        sys.exit(3)

os.makedirs(os.path.join(out, "images"), exist_ok=True)
frames = []
for i, (name, c2w) in enumerate(cameras.items()):
    png(os.path.join(out, "images", name + ".png"), WIDTH, HEIGHT, (40 * i, 100, 200))
    frames.append({"file_path": f"images/{name}.png",
                   "transform_matrix": (c2w @ np.diag([1.0, -1.0, -1.0, 1.0])).tolist()})  # OpenGL axes
normalization = np.diag([RADIUS, RADIUS, RADIUS, 1.0])
normalization[:3, 3] = CENTER
with open(os.path.join(out, "transforms.json"), "w") as f:
    json.dump({"fl_x": FOCAL, "fl_y": FOCAL, "cx": WIDTH / 2, "cy": HEIGHT / 2, "w": WIDTH, "h": HEIGHT,
               "frames": frames, "normalization": normalization.tolist()}, f)
vertex = np.zeros(len(points), dtype=[("p", "<f4", 3), ("c", "u1", 3)])
vertex["p"], vertex["c"] = points, colors
with open(os.path.join(out, "points3D.ply"), "wb") as f:
    if mode == "badpoints":  # a dataset whose points cannot be read: nothing may be imported
        vertex = vertex[:2]
    f.write((f"ply\nformat binary_little_endian 1.0\nelement vertex {len(points)}\nproperty float x\n"
             "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
             "property uchar blue\nend_header\n").encode() + vertex.tobytes())
with open("truth.json", "w") as f:
    json.dump({"K": K, "c2w": {name: c2w.tolist() for name, c2w in cameras.items()}, "points": points.tolist(),
               "colors": colors.tolist(), "center": CENTER.tolist(), "radius": RADIUS}, f)
emit("done", outputs={"dataset": out, "transforms": os.path.join(out, "transforms.json"),
                      "points": os.path.join(out, "points3D.ply"), "registered": len(cameras),
                      "images": len(cameras)})
