"""The embedded default, end to end through the add-on, headless (`python3 build.py demo`).

    python -m demo.run [--scene monkey|torus] [--iterations N] [--views 40] [--size 160] [--samples 16]
                       [--texture 512] [--timeout S]

1. render the dataset with Cycles into demo/out/data: by default Blender's monkey, smoothed, closed and
   painted (demo.monkey); `--scene torus` the textured torus (demo.scene);
2. build the extension zip (tools.extension) and install it into the (temporary) Blender user
   folder, enabled, as a user would from Preferences > Get Extensions > Install from Disk;
3. on an empty file: marble.import_rig, the `cpu` preset, marble.train, then call the add-on's
   job tick until the engine is done (the bpy module runs no timers), which imports the mesh;
4. Results > Export Textured Mesh (when the add-on has it; `--texture 0` skips it): the engine
   decimates the mesh to 40,000 faces and bakes its colours into a 512 px texture, the add-on imports
   it as "<rig> textured"; save demo/demo.blend (rig cameras, mesh, textured mesh);
5. measure the Chamfer distance between the imported mesh and the true surface, as a fraction of the
   true bounding-box diagonal;
6. render demo/demo.png (demo.picture): the reconstruction (the textured one when there is one) large
   beside the input photograph taken from the same camera, and the whole rig small; the last line
   printed is `chamfer: X` (the full-resolution mesh's; the textured one's is in result.json).

Scratch files go to demo/out/ (git-ignored); a summary is written to demo/out/result.json.
Run it with build.py's .venv interpreter from the repository root. When BLENDER_USER_RESOURCES is
not set (build.py sets it), HOME, the XDG folders, BLENDER_USER_RESOURCES and TORCHINDUCTOR_CACHE_DIR
are pointed into a temporary folder first, so the demo never touches the real Blender configuration.
"""
import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools import BuildError  # noqa: E402  (standard library only)
from tools.extension import extension_package, install_extension  # noqa: E402
from tools.sandbox import enter_sandbox  # noqa: E402

DEMO_DIR = os.path.join(REPO, "demo")
OUT_DIR = os.path.join(DEMO_DIR, "out")
BLEND_PATH = os.path.join(DEMO_DIR, "demo.blend")
PNG_PATH = os.path.join(DEMO_DIR, "demo.png")
DEMO_ITERATIONS = 400
SCENES = ("monkey", "torus")
TEXTURED_FACES = 40000
TEXTURE_SIZE = 512


def say(message):
    print(f"[demo] {message}", flush=True)


class DemoError(RuntimeError):
    pass


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m demo.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", choices=SCENES, default=SCENES[0],
                        help="what to photograph and reconstruct (default monkey)")
    # 400 steps keep the demo within 5 minutes on 2 cores; 0 takes the cpu preset's own count.
    parser.add_argument("--iterations", type=int, default=DEMO_ITERATIONS,
                        help=f"training iterations (default {DEMO_ITERATIONS}; 0: the cpu preset's own)")
    parser.add_argument("--views", type=int, default=40, help="cameras in the dataset (default 40)")
    parser.add_argument("--size", type=int, default=160, help="image size in pixels (default 160)")
    parser.add_argument("--samples", type=int, default=16, help="Cycles samples per view (default 16)")
    parser.add_argument("--texture", type=int, default=TEXTURE_SIZE, choices=(0, 512, 1024, 2048, 4096),
                        help=f"the textured export's texture size (default {TEXTURE_SIZE}; 0: no textured export)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="cancel training after this many seconds (default 1800)")
    args = parser.parse_args(argv)

    sandbox = enter_sandbox("marble-demo-")  # before bpy is imported
    try:
        return run(args)
    except (DemoError, BuildError) as exc:
        print(f"[demo] failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\n[demo] interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        if sandbox:
            shutil.rmtree(sandbox, ignore_errors=True)


def render_data(args, data_dir):
    """The dataset of `args.scene` in `data_dir`: demo.scene.render_dataset's dict."""
    from demo import monkey, scene as demo_scene
    say(f"rendering {args.views} views of the {args.scene} at {args.size}x{args.size} px, {args.samples} "
        f"samples (Cycles, CPU) into {os.path.relpath(data_dir, REPO)}")
    render = monkey.render_monkey_dataset if args.scene == "monkey" else demo_scene.render_dataset
    return render(data_dir, views=args.views, size=(args.size, args.size), samples=args.samples)


def run(args):
    started = time.perf_counter()
    timings = {}

    import bpy
    import numpy as np
    from demo import picture, scene as demo_scene
    from engine.io.rig import load_rig

    # 1. The dataset.
    data_dir = os.path.join(OUT_DIR, "data")
    dataset = render_data(args, data_dir)
    timings["render"] = dataset["seconds"]
    say(f"rendered in {dataset['seconds']:.1f} s")

    # 2. The extension, installed like a user would.
    mark = time.perf_counter()
    _, jobs = install(bpy)
    timings["install"] = time.perf_counter() - mark

    # 3. Import the rig and train through the add-on.
    bpy.ops.wm.read_homefile(use_empty=True)
    result = bpy.ops.marble.import_rig(filepath=dataset["transforms"])
    if result != {"FINISHED"}:
        raise DemoError(f"marble.import_rig({dataset['transforms']}) returned {result}")
    scene = bpy.context.scene
    settings = scene.marble
    settings.preset = "cpu"
    settings.iterations = max(0, args.iterations)
    job_dir = os.path.join(OUT_DIR, "job")
    if os.path.isdir(job_dir):
        shutil.rmtree(job_dir)
    settings.job_dir = job_dir
    cameras = [o for o in scene.objects if o.type == "CAMERA"]
    say(f"imported {len(cameras)} cameras; training with the cpu preset"
        + (f", {args.iterations} iterations" if args.iterations > 0 else ""))
    before = {o.name for o in bpy.data.objects}
    mark = time.perf_counter()
    result = bpy.ops.marble.train()
    state = bpy.context.window_manager.marble_job
    if result != {"FINISHED"}:
        raise DemoError(f"marble.train returned {result}: {state.message}")
    follow(bpy, jobs, state, args.timeout)
    timings["train"] = time.perf_counter() - mark
    if state.state != "done":
        print(f"[demo] training ended '{state.state}': {state.message}", file=sys.stderr, flush=True)
        print(f"[demo] engine log: {os.path.join(job_dir, 'engine.log')}", file=sys.stderr, flush=True)
        return 1
    meshes = [o for o in bpy.data.objects if o.name not in before and o.type == "MESH"]
    if not meshes:
        raise DemoError(f"the job is done but no mesh object was added (mesh file: {state.mesh_path})")
    mesh_obj = max(meshes, key=lambda o: len(o.data.vertices))
    mesh_path = state.mesh_path  # the export's job state replaces it
    say(f"done in {timings['train']:.0f} s: '{mesh_obj.name}' with {len(mesh_obj.data.vertices)} vertices "
        f"({state.device or 'device unknown'})")

    # 4. The textured mesh (Results > Export Textured Mesh), then the .blend.
    mark = time.perf_counter()
    textured = export_textured(bpy, jobs, state, settings, args.texture, args.timeout) if args.texture else []
    if textured:
        timings["export"] = time.perf_counter() - mark
        say(f"textured in {timings['export']:.0f} s: '{textured[0].name}' with "
            f"{sum(len(o.data.polygons) for o in textured)} faces")
    if cameras:
        scene.camera = cameras[0]
    bpy.context.preferences.filepaths.save_version = 0  # no demo.blend1 (the sandbox's preferences)
    bpy.ops.wm.save_as_mainfile(filepath=BLEND_PATH, check_existing=False)
    say(f"saved {os.path.relpath(BLEND_PATH, REPO)}")

    # 5. Chamfer distance to the truth.
    from engine.metrics import chamfer
    pred_vertices, pred_faces = demo_scene.evaluated_triangles(scene, mesh_obj)
    value = float(chamfer(pred_vertices, pred_faces, dataset["vertices"], dataset["faces"]))
    textured_value = None
    if textured:
        parts = [demo_scene.evaluated_triangles(scene, o) for o in textured]
        offsets = np.cumsum([0] + [len(v) for v, _ in parts])[:-1]
        textured_value = float(chamfer(np.concatenate([v for v, _ in parts]),
                                       np.concatenate([f + o for (_, f), o in zip(parts, offsets)]),
                                       dataset["vertices"], dataset["faces"]))

    # 6. The picture.
    engine_info = started_event(job_dir)
    config = engine_info.get("config") or {}
    iterations = (config.get("train") or {}).get("iterations", args.iterations or None)
    mark = time.perf_counter()
    views = load_rig(dataset["transforms"]).views
    shown = textured or [mesh_obj]
    what = (f"textured, {sum(len(o.data.polygons) for o in textured) / 1000.0:.0f}k faces, "
            f"{settings.export_texture} px" if textured else "vertex colours")
    labels = ("input photograph {index} of {count}, " + f"{args.size} px",
              f"Marble, cpu preset: {iterations} steps in {timings['train']:.0f} s ({what}); "
              f"Chamfer {100.0 * (textured_value if textured else value):.2f}% of the size",
              f"the rig: {len(cameras)} cameras")
    hidden = [o for o in meshes + textured if o not in shown and not o.hide_render]
    for obj in hidden:  # the picture shows one reconstruction: the textured one when there is one
        obj.hide_render = True
    try:
        photo = picture.make_picture(bpy, demo_scene, scene, views, cameras, dataset["vertices"], PNG_PATH,
                                     labels, os.path.join(OUT_DIR, "picture"))
    finally:
        for obj in hidden:
            obj.hide_render = False
    timings["picture"] = time.perf_counter() - mark
    say(f"rendered {os.path.relpath(PNG_PATH, REPO)} (beside photograph {photo + 1})")
    timings["total"] = time.perf_counter() - started

    summary = {
        "scene": args.scene, "chamfer": value, "timings": {k: round(v, 2) for k, v in timings.items()},
        "views": args.views, "size": args.size, "samples": args.samples,
        "preset": config.get("preset", "cpu"), "iterations": iterations,
        "device": engine_info.get("device"), "backend": engine_info.get("backend"),
        "job_dir": job_dir, "mesh": mesh_path,
        "mesh_vertices": len(pred_vertices), "mesh_triangles": len(pred_faces),
        "textured": textured[0].name if textured else None, "textured_chamfer": textured_value,
        "textured_faces": sum(len(o.data.polygons) for o in textured) if textured else None,
        "texture": int(settings.export_texture) if textured else None,
        "blend": BLEND_PATH, "png": PNG_PATH,
    }
    with open(os.path.join(OUT_DIR, "result.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    say("times: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"chamfer: {value:.4f}", flush=True)
    return 0


def export_textured(bpy, jobs, state, settings, texture, timeout):
    """Results > Export Textured Mesh, as a user would press it (the engine decimates the job's mesh to
    TEXTURED_FACES faces and bakes its colours into a `texture` pixels square image; the add-on imports
    the glb as "<rig> textured"): the textured object(s), or [] when this add-on has no such operator."""
    if not hasattr(bpy.types, "MARBLE_OT_export_textured"):
        say("this add-on has no Export Textured Mesh: the picture shows the vertex-coloured mesh")
        return []
    settings.export_faces = TEXTURED_FACES
    settings.export_texture = str(texture)
    before = set(bpy.data.objects)
    say(f"exporting the textured mesh ({TEXTURED_FACES} faces, {texture} px texture)")
    result = bpy.ops.marble.export_textured()
    if result != {"FINISHED"}:
        raise DemoError(f"marble.export_textured returned {result}: {state.message}")
    follow(bpy, jobs, state, timeout)
    if state.state != "done":
        raise DemoError(f"the export ended '{state.state}': {state.message}")
    made = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
    if not made:
        raise DemoError("the export is done but no textured mesh object was added")
    return made


def install(bpy):
    """Build the zip into demo/out/dist and install it into the (sandboxed) Blender like a user would;
    returns (the installed package's name, its job client module)."""
    say(f"building the extension and installing it into {os.environ['BLENDER_USER_RESOURCES']}")
    package, zip_path = install_extension(bpy, os.path.join(OUT_DIR, "dist"))
    say(f"installed {os.path.relpath(zip_path, REPO)} as {package}")
    return package, job_client(package)


def job_client(package=None):
    """The installed add-on's job client module (its tick() follows a running job)."""
    return importlib.import_module(f"{package or extension_package()}.addon.jobs")


def follow(bpy, jobs, state, timeout):
    """Call the add-on's tick until the job ends, printing progress; cancel on timeout or Ctrl-C."""
    tty = sys.stdout.isatty()
    begun = last_print = time.monotonic()
    cancelled_at = None
    line = ""
    try:
        while True:
            delay = jobs.tick()
            if delay is None:
                break
            now = time.monotonic()
            if cancelled_at is None and now - begun > timeout:
                say(f"training took longer than {timeout:.0f} s: cancelling")
                bpy.ops.marble.cancel()
                cancelled_at = now
            line = progress_line(state, now - begun)
            if tty:
                print("\r" + line.ljust(100)[:118], end="", flush=True)
            elif now - last_print >= 5.0:
                print(line, flush=True)
                last_print = now
            time.sleep(max(0.0, min(float(delay), 1.0)))
    except KeyboardInterrupt:
        if tty:
            print(flush=True)
        say("interrupted: cancelling the engine (it saves a checkpoint)")
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            bpy.ops.marble.cancel()
            while jobs.tick() is not None:
                time.sleep(0.2)
        finally:
            signal.signal(signal.SIGINT, previous)
        raise
    if tty and line:
        print("\r" + progress_line(state, time.monotonic() - begun).ljust(100)[:118], flush=True)


def progress_line(state, elapsed):
    parts = [f"[demo] {state.stage or state.state}"]
    if state.total:
        parts.append(f"{state.iteration}/{state.total} ({100.0 * state.progress:.0f}%)")
    if state.loss:
        parts.append(f"loss {state.loss:.4f}")
    if state.psnr:
        parts.append(f"psnr {state.psnr:.1f}")
    if state.eta_s and state.state == "running":
        parts.append(f"eta {state.eta_s:.0f} s")
    parts.append(f"elapsed {elapsed:.0f} s")
    return "  ".join(parts)


def started_event(job_dir):
    """The engine's `started` event (device, backend, config) from the job's events.jsonl, or {}."""
    from engine.io import protocol
    path = os.path.join(job_dir, protocol.EVENTS_FILE)
    try:
        events = protocol.read_events(path)
    except OSError:
        return {}
    return next((e for e in events if e.get("event") == protocol.STARTED), {})


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.exit(code)
