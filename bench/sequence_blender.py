"""One Blender's side of `bench sequence` and `bench.sequence_versions`: `python -m bench.sequence_blender
FOLDER --form perframe|usd [--scrub 30]`, run by the bpy module of any Blender (the .venv's, or
demo/out/venv-bpy42, venv-bpy45: numpy and bpy are all it needs besides this checkout).

Installs the extension into a sandboxed Blender, imports FOLDER/meshes/sequence.json (perframe: one
object per frame) or FOLDER/meshes/sequence.usdc (usd: one object with a Mesh Sequence Cache) through
marble.import_sequence on an empty scene, and measures: import seconds; resident memory (VmRSS) after
import, after scrubbing and after visiting every frame, each minus VmRSS just before the import;
the same for RssAnon (no mapped files) after every frame;
seconds per frame change over --scrub consecutive frames from the first (frame_set, then the shown
object's evaluated mesh read); the saved .blend's size. Then checks every frame of the range: the shown
(evaluated) mesh's vertex count and world bounding box against FOLDER/expect.json. Prints one line
`RESULT {json}`.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time


def rss_mib(field="VmRSS"):
    """This process's resident memory now (VmRSS in /proc/self/status; RssAnon: without mapped files,
    such as the USD file Blender's reader maps), MiB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def shown_mesh(bpy, objects):
    """(vertex count, world min, world max) of what shows now: the one visible object's evaluated mesh;
    (0, None, None) when none shows, (-n, ...) when n show."""
    import numpy as np

    shown = [o for o in objects if not o.hide_viewport and not o.hide_render]
    if len(shown) != 1:
        return -len(shown), None, None
    obj = shown[0].evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = obj.data
    co = np.zeros(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3).astype(np.float64)
    if len(co) == 0:
        return 0, None, None
    matrix = np.array(obj.matrix_world)
    world = co @ matrix[:3, :3].T + matrix[:3, 3]
    return len(co), world.min(0), world.max(0)


def check_frames(bpy, objects, expect):
    """Every frame of the range: the shown mesh against expect.json; returns (frames right, frames, the
    first problem or "")."""
    import numpy as np

    scene, right, problem = bpy.context.scene, 0, ""
    for key, (count, low, high) in sorted(expect.items(), key=lambda item: int(item[0])):
        frame = int(key)
        scene.frame_set(frame)
        got, got_low, got_high = shown_mesh(bpy, objects)
        scale = max(1.0, float(np.abs(low).max()), float(np.abs(high).max()))
        if got == count and np.allclose(got_low, low, rtol=0, atol=2e-6 * scale) and \
                np.allclose(got_high, high, rtol=0, atol=2e-6 * scale):
            right += 1
        elif not problem:
            problem = f"frame {frame}: {got} vertices, box {got_low} .. {got_high}; expected {count}, {low} .. {high}"
    return right, len(expect), problem


def measure(args, sandbox):
    import bpy
    from tools.extension import install_extension

    install_extension(bpy, os.path.join(sandbox, "dist"))
    bpy.ops.wm.read_homefile(use_empty=True)
    with open(os.path.join(args.folder, "expect.json"), encoding="utf-8") as f:
        data = json.load(f)
    path = os.path.join(args.folder, "meshes", "sequence.usdc" if args.form == "usd" else "sequence.json")
    scene = bpy.context.scene
    baseline, anon_baseline = rss_mib(), rss_mib("RssAnon")
    started = time.perf_counter()
    if bpy.ops.marble.import_sequence(filepath=path) != {'FINISHED'}:
        raise RuntimeError(f"marble.import_sequence({path}) failed")
    objects = [o for o in scene.objects if o.type == 'MESH']
    scene.frame_set(data["frames"][0])
    shown_mesh(bpy, objects)  # the first frame evaluated: what the user sees once the import ends
    import_s = time.perf_counter() - started
    import_rss = rss_mib()
    first = data["frames"][0]
    steps = max(1, min(args.scrub, data["frames"][1] - first))
    started = time.perf_counter()
    for frame in range(first + 1, first + 1 + steps):
        scene.frame_set(frame)
        shown_mesh(bpy, objects)
    scrub_s = (time.perf_counter() - started) / steps
    scrub_rss = rss_mib()
    right, count, problem = check_frames(bpy, objects, data["expect"])
    every_rss, every_anon = rss_mib(), rss_mib("RssAnon")
    blend = os.path.join(sandbox, "sequence.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    return {"blender": bpy.app.version_string.split()[0], "form": args.form, "objects": len(objects),
            "import_s": import_s, "rss_base_mib": baseline, "import_rss_mib": _minus(import_rss, baseline),
            "scrub_rss_mib": _minus(scrub_rss, baseline), "every_rss_mib": _minus(every_rss, baseline),
            "every_anon_mib": _minus(every_anon, anon_baseline),
            "scrub_s": scrub_s, "scrub_frames": steps, "blend_mib": os.path.getsize(blend) / 2 ** 20,
            "frames_right": right, "frames_checked": count, "problem": problem}


def _minus(a, b):
    return None if a is None or b is None else a - b


def main(argv=None):
    from tools.sandbox import enter_sandbox

    parser = argparse.ArgumentParser(prog="python -m bench.sequence_blender", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--form", choices=("perframe", "usd"), required=True)
    parser.add_argument("--scrub", type=int, default=30, help="frame changes timed (default 30)")
    args = parser.parse_args(argv)
    args.folder = os.path.abspath(args.folder)
    scratch = tempfile.mkdtemp(prefix="marble-sequence-blender-")
    sandbox = enter_sandbox("marble-sequence-blender-")  # before bpy is imported
    try:
        result = measure(args, scratch)
    finally:
        for path in filter(None, (scratch, sandbox)):
            shutil.rmtree(path, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
