"""The quality benchmark's helpers that need the .venv (numpy, torch, Blender as a Python module).

`python3 build.py bench quality` (standard library only) runs these with the .venv interpreter:

    python -m bench.meshes render NAME OUT_DIR [--views 64] [--size 200] [--samples 16]
        render the synthetic scene NAME (armadillo, spot, bunny) from the shared data's meshes/ with
        demo.scene.render_mesh_dataset: OUT_DIR/images, transforms.json, truth.ply, scene.json
    python -m bench.meshes metrics PRED.ply TRUTH.ply [--samples 20000]
        print one JSON line: chamfer (fraction of the true bounding-box diagonal), f_0.5 and f_1
        (F-scores at 0.5% and 1% of that diagonal), the vertex and triangle counts
    python -m bench.meshes snapshot MESH.ply OUT.png [--size 512] [--samples 32] [--rig DATASET]
        render the mesh with its vertex colours (Cycles, CPU) from a camera framing it; with --rig the
        camera looks from where the dataset's cameras are (their mean direction, their up)

The shared data lives in ../shared/data beside the repository (or $MARBLE_SHARED_DATA); see
tools.shared_data.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

from tools.shared_data import shared_data_candidates, shared_data_dir

# name -> (file in the shared data's meshes/ folder, what it is)
MESHES = {
    "armadillo": ("armadillo.obj", "Stanford Armadillo, 50K vertices, watertight"),
    "spot": ("spot.obj", "Keenan Crane's Spot, 2.9K vertices, watertight"),
    "bunny": ("stanford-bunny.obj", "Stanford Bunny, 36K vertices, open base"),
}
SNAPSHOT_DIRECTION = (0.45, -0.85, 0.35)  # from the front-right, a little above (synthetic scenes)
SNAPSHOT_LENS_MM = 50.0
SNAPSHOT_SENSOR_MM = 36.0


def mesh_path(name, data_dir=None):
    """The OBJ file of the synthetic scene `name`, or None when the shared data is absent."""
    data_dir = data_dir or shared_data_dir()
    if data_dir is None:
        return None
    if name not in MESHES:
        raise KeyError(f"unknown mesh scene {name!r}; known: {', '.join(MESHES)}")
    path = os.path.join(data_dir, "meshes", MESHES[name][0])
    return path if os.path.isfile(path) else None


# ---------------------------------------------------------------------------------------------------
# metrics

def surface_metrics(pred_path, truth_path, samples=20000):
    """Chamfer (fraction of the true bounding-box diagonal) and F-scores at 0.5% and 1% between the
    meshes in two PLY files, with engine.metrics."""
    from engine.metrics import chamfer, fscore
    from engine.io.ply import read_triangles

    pred_v, pred_f, _ = read_triangles(pred_path)
    true_v, true_f, _ = read_triangles(truth_path)
    result = {"vertices": int(len(pred_v)), "triangles": int(len(pred_f)),
              "truth_triangles": int(len(true_f))}
    if len(pred_f) == 0:
        return dict(result, chamfer=None, f_05=0.0, f_1=0.0)
    result["chamfer"] = chamfer(pred_v, pred_f, true_v, true_f, samples=samples)
    result["f_05"] = fscore(pred_v, pred_f, true_v, true_f, threshold=0.005, samples=samples)
    result["f_1"] = fscore(pred_v, pred_f, true_v, true_f, threshold=0.01, samples=samples)
    return result


# ---------------------------------------------------------------------------------------------------
# snapshot: the reconstructed mesh with its vertex colours

def srgb_to_linear(c):
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def framing(vertices, direction=SNAPSHOT_DIRECTION, up=(0.0, 0.0, 1.0), lens=SNAPSHOT_LENS_MM,
            sensor=SNAPSHOT_SENSOR_MM, margin=1.15):
    """Blender camera-to-world 4x4 looking at the mesh from `direction` (from its centre towards the
    camera), far enough that a sphere holding 99.5% of its vertices fills the frame (square image)."""
    from demo.scene import look_at

    vertices = np.asarray(vertices, dtype=np.float64)
    centre = 0.5 * (np.percentile(vertices, 0.5, axis=0) + np.percentile(vertices, 99.5, axis=0))
    radius = float(np.percentile(np.linalg.norm(vertices - centre, axis=1), 99.5)) or 1.0
    half_fov = math.atan(0.5 * sensor / lens)
    distance = margin * radius / math.sin(half_fov)
    direction = np.asarray(direction, dtype=np.float64)
    direction /= np.linalg.norm(direction)
    up = np.asarray(up, dtype=np.float64)
    if abs(np.dot(up / np.linalg.norm(up), direction)) > 0.99:
        up = np.array([0.0, 1.0, 0.0]) if abs(direction[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    return look_at(centre + distance * direction, centre, up), distance, radius


def rig_direction(dataset):
    """(direction, up) of a dataset's cameras: their mean direction from the point they look at, and
    their mean up (OpenCV's -y)."""
    from engine.io.rig import load_rig

    rig = load_rig(dataset)
    centres = np.array([v.c2w[:3, 3] for v in rig.views])
    forwards = np.array([v.c2w[:3, 2] for v in rig.views])
    # The point nearest all optical axes (least squares).
    A, b = np.zeros((3, 3)), np.zeros(3)
    for c, f in zip(centres, forwards):
        P = np.eye(3) - np.outer(f, f)
        A += P
        b += P @ c
    target = np.linalg.lstsq(A, b, rcond=None)[0]
    direction = (centres - target).mean(axis=0)
    up = -np.array([v.c2w[:3, 1] for v in rig.views]).mean(axis=0)
    return direction / np.linalg.norm(direction), up / np.linalg.norm(up)


def render_snapshot(mesh_file, png_path, size=512, samples=32, direction=SNAPSHOT_DIRECTION,
                    up=(0.0, 0.0, 1.0)):
    """Render the PLY mesh with its vertex colours (Cycles, CPU) into `png_path` (RGB PNG, size x size).
    The Blender data it creates is removed again; returns the seconds it took."""
    import bpy
    from demo.scene import _matrix, _quiet_stdout, render_still, uniform_world
    from engine.io.ply import read_triangles

    started = time.perf_counter()
    vertices, faces, colours = read_triangles(mesh_file)
    if len(faces) == 0:
        raise ValueError(f"{mesh_file}: the mesh has no faces")
    if colours is None:
        colours = np.full((len(vertices), 3), 0.7)
    ids = []
    try:
        scene = bpy.data.scenes.new("marble_snapshot")
        ids.append(scene)
        mesh = bpy.data.meshes.new("marble_snapshot")
        ids.append(mesh)
        mesh.from_pydata(vertices.tolist(), [], faces.tolist())
        mesh.update()
        mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), dtype=bool))
        attribute = mesh.color_attributes.new("Col", "FLOAT_COLOR", "POINT")
        rgba = np.ones((len(vertices), 4))
        rgba[:, :3] = srgb_to_linear(colours)
        attribute.data.foreach_set("color", rgba.astype(np.float32).ravel())
        material = _vertex_colour_material(bpy)
        ids.append(material)
        mesh.materials.append(material)
        obj = bpy.data.objects.new("marble_snapshot", mesh)
        ids.append(obj)
        scene.collection.objects.link(obj)

        world = uniform_world(bpy, "marble_snapshot", (0.6, 0.6, 0.62))
        ids.append(world)
        scene.world = world
        sun_data = bpy.data.lights.new("marble_snapshot", "SUN")
        ids.append(sun_data)
        sun_data.energy, sun_data.angle = 2.0, math.radians(25.0)
        sun = bpy.data.objects.new("marble_snapshot_sun", sun_data)
        ids.append(sun)
        c2w, distance, _ = framing(vertices, direction, up)
        # The sun shines from behind the camera, a little above and to the left.
        sun_dir = c2w[:3, 2] + 0.5 * c2w[:3, 1] - 0.4 * c2w[:3, 0]
        sun.matrix_world = _matrix(_sun_matrix(sun_dir))
        scene.collection.objects.link(sun)

        camera_data = bpy.data.cameras.new("marble_snapshot")
        ids.append(camera_data)
        camera_data.lens, camera_data.sensor_width = SNAPSHOT_LENS_MM, SNAPSHOT_SENSOR_MM
        camera_data.sensor_fit = "HORIZONTAL"
        camera_data.clip_start, camera_data.clip_end = distance * 0.01, distance * 10.0
        camera = bpy.data.objects.new("marble_snapshot_camera", camera_data)
        ids.append(camera)
        camera.matrix_world = _matrix(c2w)
        scene.collection.objects.link(camera)
        scene.camera = camera

        render = scene.render
        render.engine = "CYCLES"
        render.resolution_x = render.resolution_y = int(size)
        render.resolution_percentage = 100
        render.film_transparent = False
        render.image_settings.file_format, render.image_settings.color_mode = "PNG", "RGB"
        render.image_settings.compression = 90
        scene.cycles.device = "CPU"
        scene.cycles.samples = samples
        scene.cycles.use_adaptive_sampling = False
        scene.cycles.use_denoising = False
        scene.cycles.seed = 0
        scene.view_settings.view_transform = "Standard"
        scene.view_settings.look = "None"
        os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
        with _quiet_stdout():
            render_still(scene, os.path.abspath(png_path))
    finally:
        bpy.data.batch_remove(ids)
    _shrink_png(png_path)
    return time.perf_counter() - started


def _shrink_png(path):
    """Re-save with a 256-colour palette (a fraction of the size; git carries these files)."""
    try:
        from PIL import Image
    except ImportError:
        return
    image = Image.open(path).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)


def _sun_matrix(towards_light):
    """World matrix of a sun lamp shining along -towards_light (a sun lights along its local -Z)."""
    from demo.scene import look_at
    d = np.asarray(towards_light, dtype=np.float64)
    d /= np.linalg.norm(d)
    up = (0.0, 0.0, 1.0) if abs(d[2]) < 0.99 else (0.0, 1.0, 0.0)
    matrix = look_at(d, (0.0, 0.0, 0.0), up)
    matrix[:3, 3] = 0.0
    return matrix


def _vertex_colour_material(bpy):
    material = bpy.data.materials.new("marble_snapshot")
    if bpy.app.version < (5, 0, 0):
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    attribute = nodes.new("ShaderNodeAttribute")
    attribute.attribute_name = "Col"
    diffuse = nodes.new("ShaderNodeBsdfDiffuse")
    links.new(attribute.outputs["Color"], diffuse.inputs["Color"])
    # Some emission keeps the colours readable in the shade; the diffuse part shows the shape.
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = 0.35
    links.new(attribute.outputs["Color"], emission.inputs["Color"])
    add = nodes.new("ShaderNodeAddShader")
    links.new(diffuse.outputs["BSDF"], add.inputs[0])
    links.new(emission.outputs["Emission"], add.inputs[1])
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(add.outputs["Shader"], output.inputs["Surface"])
    return material


# ---------------------------------------------------------------------------------------------------
# command line

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.meshes", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="render a synthetic scene from the shared meshes")
    render.add_argument("name", choices=sorted(MESHES))
    render.add_argument("out_dir")
    render.add_argument("--views", type=int, default=64)
    render.add_argument("--size", type=int, default=200)
    render.add_argument("--samples", type=int, default=16)
    metrics = sub.add_parser("metrics", help="Chamfer and F-scores of a mesh against the truth")
    metrics.add_argument("pred")
    metrics.add_argument("truth")
    metrics.add_argument("--samples", type=int, default=20000)
    snapshot = sub.add_parser("snapshot", help="render a mesh with its vertex colours into a PNG")
    snapshot.add_argument("mesh")
    snapshot.add_argument("png")
    snapshot.add_argument("--size", type=int, default=512)
    snapshot.add_argument("--samples", type=int, default=32)
    snapshot.add_argument("--rig", help="look from where this dataset's cameras are")
    args = parser.parse_args(argv)

    if args.command == "render":
        path = mesh_path(args.name)
        if path is None:
            print(f"[meshes] no shared data: {MESHES[args.name][0]} not found (looked in "
                  f"{shared_data_candidates()})", file=sys.stderr)
            return 2
        from demo.scene import render_mesh_dataset
        result = render_mesh_dataset(path, args.out_dir, views=args.views, size=args.size,
                                     samples=args.samples)
        print(json.dumps({"transforms": result["transforms"], "truth": result["truth"],
                          "scene": result["scene"], "seconds": round(result["seconds"], 2),
                          "views": args.views, "size": args.size}), flush=True)
    elif args.command == "metrics":
        print(json.dumps(surface_metrics(args.pred, args.truth, args.samples)), flush=True)
    else:
        direction, up = SNAPSHOT_DIRECTION, (0.0, 0.0, 1.0)
        if args.rig:
            direction, up = rig_direction(args.rig)
        seconds = render_snapshot(args.mesh, args.png, size=args.size, samples=args.samples,
                                  direction=direction, up=up)
        print(json.dumps({"png": os.path.abspath(args.png), "seconds": round(seconds, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
