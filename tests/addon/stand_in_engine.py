"""Stand-in for `python -m engine train`: behaviour chosen by $MARBLE_FAKE_MODE."""
import json, os, sys, time
import numpy as np

args = sys.argv[1:]
if args[:1] == ["doctor"]:
    print(json.dumps({"ok": True, "message": "fake engine ready"}))
    sys.exit(0)
def option(name):
    return args[args.index(name) + 1] if name in args else None

out = option("--out")
mode = os.environ.get("MARBLE_FAKE_MODE", "ok")
with open(os.path.join(out, "argv.json"), "w") as f:
    json.dump({"argv": args, "cwd": os.getcwd()}, f)

def emit(kind, **fields):
    print(json.dumps(dict(event=kind, t=round(time.monotonic() % 1000, 3), **fields)), flush=True)

def write_ply(path, n_extra=0):
    t = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t],
                  [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=np.float32)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                  [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
                  [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    f = f[:len(f) - n_extra]
    vertex = np.zeros(len(v), dtype=[("p", "<f4", 3), ("c", "u1", 3)])
    vertex["p"], vertex["c"] = v, [200, 100, 50]
    face = np.zeros(len(f), dtype=[("n", "u1"), ("i", "<i4", 3)])
    face["n"], face["i"] = 3, f
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write((f"ply\nformat binary_little_endian 1.0\nelement vertex {len(v)}\nproperty float x\n"
                  "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
                  f"property uchar blue\nelement face {len(f)}\nproperty list uchar int vertex_indices\n"
                  "end_header\n").encode() + vertex.tobytes() + face.tobytes())
    return path

print("fake engine: starting", file=sys.stderr, flush=True)
emit("started", config={"preset": option("--preset")}, device="cpu", backend="fake", job=out)
print("a stray line that is not an event", flush=True)
if mode == "error":
    emit("error", message=f"{option('--data')}: no usable views (fake)")
    sys.exit(2)
if mode == "huge":  # a 10 MB stdout line that is no event (sent in pieces), then a 10 MB error message
    for _ in range(10):
        sys.stdout.write("x" * (1 << 20))
    sys.stdout.write("\n")
    emit("error", message="huge error: " + "y" * (10 << 20) + " :end")
    sys.exit(2)
# Like the real engine: the region actually used, from --region or its own estimate.
if "--region" in args:
    i = args.index("--region")
    x, y, z, r = (float(v) for v in args[i + 1:i + 5])
    region = {"center": [x, y, z], "radius": r}
else:
    region = {"center": [0.1, 0.2, 0.3], "radius": 0.7}
emit("stage", name="train", region=region)
total = 4
for i in range(1, total + 1):
    emit("progress", iteration=i, total=total, loss=1.0 / i, losses={"rgb": 1.0 / i}, psnr=20.0 + i,
         eta_s=float(total - i) * 30, frame=None)
if mode == "flood":  # thousands of events queued, then done, and the engine exits at once
    for i in range(int(os.environ.get("MARBLE_FAKE_COUNT", "6000"))):
        emit("progress", iteration=i % total + 1, total=total, loss=0.5, psnr=20.0, eta_s=1.0, frame=None)
if mode == "numbers":  # figures no property can hold
    for value in (float("inf"), float("-inf"), float("nan"), 1e30, 10 ** 30, -10 ** 30, 1e300):
        emit("progress", iteration=value, total=value, loss=value, psnr=value, eta_s=value, frame=value,
             sequence_progress=value, frame_index=value, frame_count=value)
if mode == "die":
    print("Traceback (most recent call last):\nRuntimeError: fake engine crashed on purpose", file=sys.stderr,
          flush=True)
    sys.exit(1)
if mode == "stubborn":  # ignores the cancel line and SIGTERM: only SIGKILL stops it
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdin.readline()
    time.sleep(60)
if mode == "wait":
    emit("preview", path=write_ply(os.path.join(out, "previews", "preview_000004.ply"), n_extra=4))
    line = sys.stdin.readline()
    with open(os.path.join(out, "stdin.txt"), "w") as f:
        f.write(line)
    if line.strip() == "cancel":
        os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        with open(os.path.join(out, "checkpoints", "step_0000004.pt"), "wb") as f:
            f.write(b"fake checkpoint")
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({"preset": option("--preset")}, f)
        emit("cancelled", checkpoint=os.path.join(out, "checkpoints", "step_0000004.pt"))
        time.sleep(float(os.environ.get("MARBLE_FAKE_LINGER", "0")))  # like the real engine, exiting takes a while
        sys.exit(3)
    sys.exit(1)
emit("stage", name="extract")
mesh = write_ply(os.path.join(out, "meshes", "mesh.ply"))
emit("mesh", path=mesh, frame=None)
emit("done", outputs={"mesh": mesh})
