"""Stand-in for `python -m engine train` on a dynamic rig, driven by the plan in $MARBLE_FAKE_PLAN:
frames (the job's), order (the frames' mesh events in order; a frame may come twice), coordinates,
matrices {frame: 4x4}, bad (frames whose PLY is garbage), silent (frames written to sequence.json
without a mesh event), drop_at_end (frames taken out of sequence.json before done), step (wait for a
"next" line before each frame), end ("done", or "wait": a last line decides between done and cancel)."""
import json, os, sys, time
import numpy as np
from engine.io.ply import write_ply

args = sys.argv[1:]
if args[:1] == ["doctor"]:
    print(json.dumps({"ok": True, "message": "fake engine ready"}))
    sys.exit(0)
out = args[args.index("--out") + 1]
resume = "--resume" in args
with open(os.environ["MARBLE_FAKE_PLAN"]) as f:
    plan = json.load(f)
frames = plan["frames"]
coordinates = plan.get("coordinates", "world")
matrices = {int(k): v for k, v in plan.get("matrices", {}).items()}
meshes = os.path.join(out, "meshes")
sequence = os.path.join(meshes, "sequence.json")
os.makedirs(meshes, exist_ok=True)
os.makedirs(os.path.join(out, "previews"), exist_ok=True)
entries = {}
if resume and os.path.isfile(sequence):
    with open(sequence) as f:
        entries = {e["frame"]: e for e in json.load(f)["frames"]}
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"frames": frames}, f)
with open(os.path.join(out, "runs.txt"), "a") as f:
    f.write(("resume" if resume else "fresh") + "\n")

def emit(kind, **fields):
    line = json.dumps(dict(event=kind, t=round(time.monotonic() % 1000, 3), **fields))
    with open(os.path.join(out, "events.jsonl"), "a") as f:  # as the engine keeps every event
        f.write(line + "\n")
    print(line, flush=True)

def icosahedron():
    t = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t],
                  [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=float) * 0.2
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                  [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
                  [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    return v, f

def write_sequence():
    data = {"coordinates": coordinates, "frames": [entries[k] for k in sorted(entries)]}
    with open(sequence + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(sequence + ".tmp", sequence)

def checkpoint():
    folder = os.path.join(out, "checkpoints")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "last.pt")
    open(path, "wb").close()
    return path

frame = frames[0]
def wait():
    line = sys.stdin.readline().strip()
    if line != "next":
        emit("cancelled", checkpoint=checkpoint(), iteration=1, frame=frame)
        sys.exit(3)

emit("started", config={"preset": "cpu"}, device="cpu", backend="fake", job=out, dynamic=True, frames=frames,
     coordinates=coordinates)
emit("stage", name="load")
emit("stage", name="train", region={"center": [0.0, 0.0, 0.0], "radius": 1.0})
sent = {}
vertices, faces = icosahedron()
for frame in plan.get("order", frames):
    if resume and frame in entries and frame not in sent:
        continue  # finished before the resume: not announced again
    if plan.get("step"):
        wait()
    k, n = frames.index(frame), len(frames)
    done = len(entries)
    emit("stage", name="frame", frame=frame, index=k, count=n)
    phases = ["predict", "train"] if k > 0 else ["train"]
    for phase in phases:
        if phase == "predict":
            emit("stage", name="predict", frame=frame)
        emit("progress", iteration=1, total=2, frame=frame, frame_index=k, frame_count=n, phase=phase,
             sequence_progress=(done + 0.5) / n, loss=0.5, losses={"rgb": 0.5}, psnr=20.0 + k, eta_s=10.0 * (n - done))
    preview = os.path.join(out, "previews", "preview.ply")
    write_ply(preview, vertices * 0.5, faces)
    emit("preview", path=preview, iteration=1)
    emit("stage", name="extract", frame=frame)
    path = os.path.join(meshes, "frame_%06d.ply" % frame)
    matrix = matrices.get(frame, np.eye(4).tolist())
    if frame in plan.get("bad", []):
        with open(path, "wb") as f:
            f.write(b"ply\nformat binary_little_endian 1.0\nelement vertex 1000\nproperty float x\nend_header\n\0")
    else:
        scale = 1.0 + 0.5 * sent.get(frame, 0)  # a frame sent again gets a bigger mesh
        write_ply(path, vertices * scale + [frame, 0.0, 0.0], faces, np.full((len(vertices), 3), 0.5))
    sent[frame] = sent.get(frame, 0) + 1
    entries[frame] = {"frame": frame, "mesh": os.path.basename(path), "world_from_canonical": matrix,
                      "seconds": 0.25 * k}
    write_sequence()
    if frame not in plan.get("silent", []):
        emit("mesh", path=path, frame=frame, vertices=len(vertices), faces=len(faces), iteration=2, loss=0.5,
             seconds=0.25 * k, world_from_canonical=matrix, coordinates=coordinates, sequence=sequence)
if plan.get("end") == "wait":
    wait()
for dropped in plan.get("drop_at_end", []):
    entries.pop(dropped, None)
write_sequence()
emit("done", outputs={"sequence": sequence, "meshes": meshes, "frames": len(entries)})
