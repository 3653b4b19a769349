"""The embedded default, end to end through the add-on, headless (`python3 build.py demo`).

    python -m demo.run [--iterations N] [--views 40] [--size 160] [--samples 16] [--timeout S]

1. render the torus dataset with Cycles (demo.scene) into demo/out/data;
2. build the extension zip (tools.extension) and install it into the (temporary) Blender user
   folder, enabled, as a user would from Preferences > Get Extensions > Install from Disk;
3. on an empty file: marble.import_rig, the `cpu` preset, marble.train, then call the add-on's
   job tick until the engine is done (the bpy module runs no timers), which imports the mesh;
4. save demo/demo.blend (rig cameras and mesh), render demo/demo.png (the mesh among the cameras);
5. print the Chamfer distance between the imported mesh and the true surface, as a fraction of the
   true bounding-box diagonal: the last line is `chamfer: X`.

Scratch files go to demo/out/ (git-ignored); a summary is written to demo/out/result.json.
Run it with build.py's .venv interpreter from the repository root. When BLENDER_USER_RESOURCES is
not set (build.py sets it), HOME, the XDG folders, BLENDER_USER_RESOURCES and TORCHINDUCTOR_CACHE_DIR
are pointed into a temporary folder first, so the demo never touches the real Blender configuration.
"""
import argparse
import importlib
import json
import math
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
RENDER_ONLY_COLLECTION = "demo render only"
DEMO_ITERATIONS = 400


def say(message):
    print(f"[demo] {message}", flush=True)


class DemoError(RuntimeError):
    pass


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m demo.run", description=__doc__.split("\n\n")[0])
    # 400 steps keep the demo within 5 minutes on 2 cores (the torus fills the frame, so each step
    # costs more than on the quality benchmark's meshes); 0 takes the cpu preset's own count.
    parser.add_argument("--iterations", type=int, default=DEMO_ITERATIONS,
                        help=f"training iterations (default {DEMO_ITERATIONS}; 0: the cpu preset's own)")
    parser.add_argument("--views", type=int, default=40, help="cameras in the dataset (default 40)")
    parser.add_argument("--size", type=int, default=160, help="image size in pixels (default 160)")
    parser.add_argument("--samples", type=int, default=16, help="Cycles samples per view (default 16)")
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


def run(args):
    started = time.perf_counter()
    timings = {}

    import bpy
    from demo import scene as demo_scene

    # 1. The dataset.
    data_dir = os.path.join(OUT_DIR, "data")
    say(f"rendering {args.views} views of the torus at {args.size}x{args.size} px, {args.samples} samples "
        f"(Cycles, CPU) into {os.path.relpath(data_dir, REPO)}")
    dataset = demo_scene.render_dataset(data_dir, views=args.views, size=(args.size, args.size),
                                        samples=args.samples)
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
    say(f"done in {timings['train']:.0f} s: '{mesh_obj.name}' with {len(mesh_obj.data.vertices)} vertices "
        f"({state.device or 'device unknown'})")

    # 4. The .blend and the picture.
    if cameras:
        scene.camera = cameras[0]
    bpy.context.preferences.filepaths.save_version = 0  # no demo.blend1 (the sandbox's preferences)
    bpy.ops.wm.save_as_mainfile(filepath=BLEND_PATH, check_existing=False)
    say(f"saved {os.path.relpath(BLEND_PATH, REPO)}")
    mark = time.perf_counter()
    render_overview(bpy, demo_scene, scene, cameras, PNG_PATH)
    timings["picture"] = time.perf_counter() - mark
    say(f"rendered {os.path.relpath(PNG_PATH, REPO)}")

    # 5. Chamfer distance to the truth.
    from engine.metrics import chamfer
    pred_vertices, pred_faces = demo_scene.evaluated_triangles(scene, mesh_obj)
    value = float(chamfer(pred_vertices, pred_faces, dataset["vertices"], dataset["faces"]))
    timings["total"] = time.perf_counter() - started

    engine_info = started_event(job_dir)
    config = engine_info.get("config") or {}
    summary = {
        "chamfer": value, "timings": {k: round(v, 2) for k, v in timings.items()},
        "views": args.views, "size": args.size, "samples": args.samples,
        "preset": config.get("preset", "cpu"),
        "iterations": (config.get("train") or {}).get("iterations", args.iterations or None),
        "device": engine_info.get("device"), "backend": engine_info.get("backend"),
        "job_dir": job_dir, "mesh": state.mesh_path,
        "mesh_vertices": len(pred_vertices), "mesh_triangles": len(pred_faces),
        "blend": BLEND_PATH, "png": PNG_PATH,
    }
    with open(os.path.join(OUT_DIR, "result.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    say("times: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"chamfer: {value:.4f}", flush=True)
    return 0


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


# ---------------------------------------------------------------------------------------------------
# The overview picture: Cycles on the CPU (the bpy module has no GPU context for Workbench or EEVEE).
# Cameras do not render, so each rig camera is drawn as a thin frustum (a curve with a bevel) in a
# render-only collection added after demo.blend was saved.

def render_overview(bpy, demo_scene, scene, cameras, path, size=(960, 720), samples=32):
    from mathutils import Matrix, Vector

    collection = bpy.data.collections.new(RENDER_ONLY_COLLECTION)
    scene.collection.children.link(collection)

    width, height = scene.render.resolution_x, scene.render.resolution_y
    curve = bpy.data.curves.new("camera frusta", "CURVE")
    curve.dimensions = "3D"
    curve.bevel_depth = 0.008
    curve.bevel_resolution = 1
    for cam in cameras:
        K = demo_scene.camera_intrinsics(cam.data, width, height)
        depth = 0.45
        corners_px = [(0, 0), (width, 0), (width, height), (0, height)]
        # OpenCV-axed corner directions -> Blender camera axes (y up, looking down -Z).
        local = [Vector(((u - K[0, 2]) / K[0, 0] * depth, -(v - K[1, 2]) / K[1, 1] * depth, -depth))
                 for u, v in corners_px]
        world = [cam.matrix_world @ p for p in local]
        apex = cam.matrix_world.translation
        strokes = [[apex, c] for c in world] + [world + [world[0]]]
        for stroke in strokes:
            spline = curve.splines.new("POLY")
            spline.points.add(len(stroke) - 1)
            for point, co in zip(spline.points, stroke):
                point.co = (co.x, co.y, co.z, 1.0)
    frusta = bpy.data.objects.new("camera frusta", curve)
    frusta.data.materials.append(_emission_material(bpy, demo_scene, "demo frustum", (1.0, 0.42, 0.08)))
    collection.objects.link(frusta)

    eye = Vector((4.4, -5.1, 3.1))
    camera_data = bpy.data.cameras.new("demo overview")
    camera_data.lens, camera_data.sensor_width = 30.0, 36.0
    camera_data.sensor_fit = "HORIZONTAL"
    overview = bpy.data.objects.new("demo overview", camera_data)
    overview.matrix_world = Matrix([list(map(float, row)) for row in demo_scene.look_at(eye, (0, 0, -0.3))])
    collection.objects.link(overview)

    sun_data = bpy.data.lights.new("demo sun", "SUN")
    sun_data.energy, sun_data.angle = 3.0, math.radians(20.0)
    sun = bpy.data.objects.new("demo sun", sun_data)
    sun.rotation_euler = (math.radians(40.0), 0.0, math.radians(20.0))
    collection.objects.link(sun)

    world = demo_scene.uniform_world(bpy, "demo world", (0.32, 0.34, 0.38))

    saved = (scene.camera, scene.world)
    render = scene.render
    scene.camera, scene.world = overview, world
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y, render.resolution_percentage = size[0], size[1], 100
    render.film_transparent = False
    render.use_persistent_data = False
    render.image_settings.file_format, render.image_settings.color_mode = "PNG", "RGB"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.view_settings.view_transform = "Standard"
    try:
        demo_scene.render_still(scene, path)
    finally:
        scene.camera, scene.world = saved
        render.resolution_x, render.resolution_y = width, height


def _emission_material(bpy, demo_scene, name, colour):
    material, nodes, links = demo_scene.new_material(bpy, name)
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Color"].default_value = (*colour, 1.0)
    emission.inputs["Strength"].default_value = 1.5
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.exit(code)
