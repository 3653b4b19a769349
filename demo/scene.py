"""The embedded default scene: a textured torus with exactly known geometry, rendered with Cycles.

Runs under the bpy module (Blender as a Python module, no window), with build.py's .venv interpreter:

    python -m demo.scene OUT_DIR [--views 40] [--size 160 160] [--samples 16]
    python -m demo.scene OUT_DIR --mesh MESH.obj [--views 64] [--size 200] [--samples 16] [--diagonal 1.7]

writes OUT_DIR/images/NNN.png (RGBA; alpha is the object mask), OUT_DIR/transforms.json (through
engine.io.rig.write_transforms, so the engine reads exactly what Blender rendered) and OUT_DIR/truth.ply
(the true surface in world coordinates: binary little-endian PLY, float x,y,z and a uchar/int face list).

The torus (major radius 0.6, minor radius 0.25, axis +Z) sits at the origin. It carries a procedural
checker whose two colours change hue around the ring, and a Lambertian (diffuse) material lit by a
uniform world and a soft sun, so a surface point has the same colour from every camera. The cameras
lie on a Fibonacci spiral over a sphere of radius 3 (elevations -40 to +80 degrees) and look at the
origin; the lens makes the torus fill most of the smaller image side.

With --mesh (render_mesh_dataset) the subject is a triangle mesh read from an OBJ file with Blender's
own importer (Y up in the file, Z up in Blender), scaled and centred so that its bounding box is
centred at the origin with a diagonal of 1.7 (so it fits the same cameras as the torus), with the same
kind of texture (by object-space position: meshes need no UVs) and lights. Its cameras cover the whole
sphere (elevations -90 to +90 degrees) and OUT_DIR/scene.json records the source file and the 4x4
matrix taking the file's coordinates to the world.
"""
import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from engine.io.ply import write_ply  # noqa: E402
from engine.io.rig import OPENGL_TO_OPENCV, Rig, View, write_transforms  # noqa: E402
# The numpy-only geometry (the one torus, the camera spiral, look_at), here under its old names too.
from demo.geometry import (CAMERA_DISTANCE, ELEVATION_RANGE_DEG, MAJOR_RADIUS, MAJOR_SEGMENTS,  # noqa: E402,F401
                           MESH_DIAGONAL, MINOR_RADIUS, MINOR_SEGMENTS, camera_positions, look_at,
                           normalising_matrix, torus_mesh, torus_parameters, torus_triangles)

LENS_MM = 50.0
SENSOR_MM = 36.0
SEED = 0
SCENE_NAME = "marble_demo_dataset"
MESH_ELEVATION_RANGE_DEG = (-90.0, 90.0)
MESH_VIEWS = 64
MESH_SIZE = 200
SCENE_FILE = "scene.json"
# Blender's OBJ importer (forward -Z, up Y): file coordinates (x, y, z) -> Blender (x, -z, y).
OBJ_TO_BLENDER = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------------
# Cameras

def camera_intrinsics(camera, width, height):
    """K (3x3, pixels, pixel centres at +0.5) of a Blender camera datablock rendered at width x height.

    Square pixels; follows Blender's sensor fit (AUTO fits the sensor width to the larger side) and
    lens shift (in units of the fitted side, as Blender's view plane computes it).
    """
    fit = camera.sensor_fit
    if fit == "AUTO":
        fit, sensor = ("HORIZONTAL" if width >= height else "VERTICAL"), camera.sensor_width
    else:
        sensor = camera.sensor_width if fit == "HORIZONTAL" else camera.sensor_height
    fitted = width if fit == "HORIZONTAL" else height
    focal = camera.lens / sensor * fitted
    return np.array([[focal, 0.0, width / 2.0 - camera.shift_x * fitted],
                     [0.0, focal, height / 2.0 + camera.shift_y * fitted],
                     [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------------
# Blender scene

def new_material(bpy, name):
    """A new node material with an empty node tree: (material, its nodes, its links)."""
    material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):  # always on (and deprecated) from Blender 5.0
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    return material, nodes, links


def _material(bpy, name="marble_demo_torus"):
    material, nodes, links = new_material(bpy, name)
    coords = nodes.new("ShaderNodeTexCoord")
    # Hue goes once around the ring (radial gradient of the object coordinates).
    hue = nodes.new("ShaderNodeTexGradient")
    hue.gradient_type = "RADIAL"
    links.new(coords.outputs["Object"], hue.inputs["Vector"])
    hue_b = nodes.new("ShaderNodeMath")
    hue_b.operation = "WRAP"
    add = nodes.new("ShaderNodeMath")
    add.operation = "ADD"
    add.inputs[1].default_value = 0.45
    links.new(hue.outputs["Fac"], add.inputs[0])
    links.new(add.outputs["Value"], hue_b.inputs[0])
    hue_b.inputs[1].default_value = 1.0
    hue_b.inputs[2].default_value = 0.0
    colours = []
    for source, saturation, value in ((hue.outputs["Fac"], 0.85, 0.95), (hue_b.outputs["Value"], 0.7, 0.35)):
        combine = nodes.new("ShaderNodeCombineColor")
        combine.mode = "HSV"
        links.new(source, combine.inputs[0])
        combine.inputs[1].default_value = saturation
        combine.inputs[2].default_value = value
        colours.append(combine.outputs["Color"])
    checker = nodes.new("ShaderNodeTexChecker")
    checker.inputs["Scale"].default_value = 7.0
    links.new(coords.outputs["Object"], checker.inputs["Vector"])
    links.new(colours[0], checker.inputs["Color1"])
    links.new(colours[1], checker.inputs["Color2"])
    diffuse = nodes.new("ShaderNodeBsdfDiffuse")
    diffuse.inputs["Roughness"].default_value = 0.0
    links.new(checker.outputs["Color"], diffuse.inputs["Color"])
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(diffuse.outputs["BSDF"], output.inputs["Surface"])
    return material


def uniform_world(bpy, name="marble_demo_world", colour=(0.55, 0.55, 0.55)):
    """A world of one uniform colour (the even light of the datasets, the backdrop of pictures)."""
    world = bpy.data.worlds.new(name)
    if bpy.app.version < (5, 0, 0):
        world.use_nodes = True
    background = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
    background.inputs["Color"].default_value = (*colour, 1.0)
    background.inputs["Strength"].default_value = 1.0
    return world


def _configure_render(scene, width, height, samples):
    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    render.film_transparent = True
    render.use_persistent_data = True
    render.use_compositing = False
    render.use_sequencer = False
    render.threads_mode = "AUTO"
    settings = render.image_settings
    settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGBA", "8"
    settings.compression = 15
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = samples
    cycles.use_adaptive_sampling = False
    cycles.use_denoising = False
    cycles.seed = SEED
    cycles.use_animated_seed = False
    cycles.max_bounces = 4
    cycles.diffuse_bounces = 2
    cycles.glossy_bounces = 0
    cycles.transmission_bounces = 0
    cycles.volume_bounces = 0
    cycles.transparent_max_bounces = 2
    plain_colour_output(scene)


def plain_colour_output(scene):
    """No denoising and Standard colour management (no look, exposure or gamma): a pixel holds the
    shaded colour as it is (benchmarks that compare renders with photographs rely on it too)."""
    for layer in scene.view_layers:
        if hasattr(layer, "cycles"):
            layer.cycles.use_denoising = False
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    scene.display_settings.display_device = "sRGB"


def torus_subject(bpy, scene):
    """The torus object (linked into `scene`); returns (object, [ids it created], info dict)."""
    vertices, quads = torus_mesh()
    mesh = bpy.data.meshes.new("marble_demo_torus")
    mesh.from_pydata(vertices.tolist(), [], quads.tolist())
    mesh.update()
    mesh.polygons.foreach_set("use_smooth", np.ones(len(quads), dtype=bool))
    mesh.materials.append(_material(bpy))
    torus = bpy.data.objects.new("torus", mesh)
    scene.collection.objects.link(torus)
    return torus, [mesh, mesh.materials[0], torus], {}


def read_obj(bpy, scene, path):
    """World-space vertices and triangles of an OBJ file as Blender's importer reads it into `scene`
    (everything it creates is removed again): (vertices (N, 3), triangles (M, 3), importer's 4x4)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such mesh file")
    kinds = ("objects", "meshes", "materials", "images", "collections")
    before = {kind: set(getattr(bpy.data, kind)) for kind in kinds}
    override = dict(scene=scene, view_layer=scene.view_layers[0], collection=scene.collection)
    try:
        with bpy.context.temp_override(**override), _quiet_stdout():
            result = bpy.ops.wm.obj_import(filepath=path)
        created = [o for o in bpy.data.objects if o not in before["objects"] and o.type == "MESH"]
        if result != {"FINISHED"} or not created:
            raise ValueError(f"{path}: Blender's OBJ importer read no mesh from it ({result})")
        parts, offset, matrix = [], 0, None
        for obj in created:
            vertices, triangles = evaluated_triangles(scene, obj)
            parts.append((vertices, triangles + offset))
            offset += len(vertices)
            matrix = np.array(obj.matrix_world) if matrix is None else matrix
        if np.allclose(matrix, OBJ_TO_BLENDER, atol=1e-6):
            matrix = OBJ_TO_BLENDER.copy()  # the importer's axes, exactly (its matrix is float32)
    finally:
        removed = [block for kind in kinds for block in getattr(bpy.data, kind) if block not in before[kind]]
        if removed:
            bpy.data.batch_remove(removed)
    vertices = np.concatenate([p[0] for p in parts])
    triangles = np.concatenate([p[1] for p in parts])
    if len(triangles) == 0:
        raise ValueError(f"{path}: the mesh has no faces")
    return vertices, triangles, matrix


def mesh_subject(path, diagonal=MESH_DIAGONAL):
    """A subject builder (like torus_subject) for the mesh in the OBJ file `path`, scaled and centred."""
    stem = os.path.splitext(os.path.basename(path))[0]

    def build(bpy, scene):
        vertices, triangles, importer = read_obj(bpy, scene, path)
        normalise = normalising_matrix(vertices, diagonal)
        vertices = vertices @ normalise[:3, :3].T + normalise[:3, 3]
        mesh = bpy.data.meshes.new(f"marble_demo_{stem}")
        mesh.from_pydata(vertices.tolist(), [], triangles.tolist())
        mesh.update()
        mesh.polygons.foreach_set("use_smooth", np.ones(len(triangles), dtype=bool))
        mesh.materials.append(_material(bpy, f"marble_demo_{stem}"))
        obj = bpy.data.objects.new(stem, mesh)
        scene.collection.objects.link(obj)
        # The file's coordinates -> the importer's (Z up) -> scaled and centred world.
        info = {"source": os.path.abspath(path), "diagonal": diagonal,
                "obj_to_world": (normalise @ importer).tolist()}
        return obj, [mesh, mesh.materials[0], obj], info

    return build


def build_scene(bpy, width, height, samples):
    """A new scene holding the torus, the lights and one camera; returns (scene, torus, camera, ids)."""
    return _build_scene(bpy, width, height, samples)[:4]


def _build_scene(bpy, width, height, samples, subject=None):
    """build_scene with any subject (default: the torus); also returns what the subject builder
    reports (a dict)."""
    scene = bpy.data.scenes.new(SCENE_NAME)
    _configure_render(scene, width, height, samples)
    scene.world = uniform_world(bpy)
    ids = [scene, scene.world]
    try:
        obj, subject_ids, info = (subject or torus_subject)(bpy, scene)
    except BaseException:
        bpy.data.batch_remove(ids)
        raise
    ids += subject_ids

    sun_data = bpy.data.lights.new("marble_demo_sun", "SUN")
    sun_data.energy = 1.5
    sun_data.angle = math.radians(30.0)
    sun = bpy.data.objects.new("sun", sun_data)
    sun.rotation_euler = (math.radians(35.0), 0.0, math.radians(30.0))
    scene.collection.objects.link(sun)

    camera_data = bpy.data.cameras.new("marble_demo_camera")
    camera_data.lens, camera_data.lens_unit = LENS_MM, "MILLIMETERS"
    # Fit the sensor to the smaller image side so the subject fills it whatever the aspect.
    camera_data.sensor_fit = "VERTICAL" if width >= height else "HORIZONTAL"
    camera_data.sensor_width = camera_data.sensor_height = SENSOR_MM
    camera_data.clip_start, camera_data.clip_end = 0.1, 100.0
    camera = bpy.data.objects.new("camera", camera_data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    ids += [sun_data, sun, camera_data, camera]
    return scene, obj, camera, ids, info


def evaluated_triangles(scene, obj):
    """World-space vertices and triangles of `obj` as the depsgraph of `scene` evaluates it."""
    depsgraph = scene.view_layers[0].depsgraph
    depsgraph.update()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
        mesh.vertices.foreach_get("co", co)
        tris = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int64)
        mesh.loop_triangles.foreach_get("vertices", tris)
    finally:
        evaluated.to_mesh_clear()
    matrix = np.array(evaluated.matrix_world)
    co = co.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
    return co, tris.reshape(-1, 3)


def render_dataset(out_dir, views=40, size=(160, 160), samples=16, keep_scene=False, verbose=False,
                   verbose_blender=False):
    """Render the torus dataset into `out_dir` and write transforms.json and truth.ply.

    Returns dict(transforms=path, truth=path, bbox_diagonal=float, vertices=(N,3), faces=(M,3),
    images=[paths], seconds=float). The scene is built in a new Blender scene that is removed afterwards
    (the current scene is left untouched) unless keep_scene is true, in which case it becomes the
    window's scene.
    """
    return _render(out_dir, views, size, samples, keep_scene, verbose, verbose_blender,
                   subject=None, elevation_range_deg=ELEVATION_RANGE_DEG)


def render_mesh_dataset(mesh_path, out_dir, views=MESH_VIEWS, size=MESH_SIZE, samples=16,
                        diagonal=MESH_DIAGONAL, elevation_range_deg=MESH_ELEVATION_RANGE_DEG,
                        keep_scene=False, verbose=False, verbose_blender=False):
    """Render the mesh in the OBJ file `mesh_path` (scaled and centred: bounding box at the origin with
    the given diagonal) like the torus: `out_dir`/images, transforms.json, truth.ply (the scaled and
    centred surface) and scene.json (source, diagonal, obj_to_world 4x4, views, size, samples).

    Returns render_dataset's dict plus source, obj_to_world (4x4 array) and scene (scene.json's path).
    """
    result = _render(out_dir, views, size, samples, keep_scene, verbose, verbose_blender,
                     subject=mesh_subject(mesh_path, diagonal), elevation_range_deg=elevation_range_deg)
    info = dict(result.pop("info"))
    width, height = result["size"]
    info.update(views=views, size=[width, height], samples=samples,
                elevation_range_deg=list(elevation_range_deg),
                vertices=len(result["vertices"]), triangles=len(result["faces"]))
    path = os.path.join(os.path.abspath(out_dir), SCENE_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    result.update(source=info["source"], obj_to_world=np.array(info["obj_to_world"]), scene=path)
    return result


def render_subject(subject, out_dir, views, size, samples, elevation_range_deg, keep_scene=False,
                   verbose=False, verbose_blender=False):
    """Render any subject builder (`subject(bpy, scene)` -> (object, [ids], info dict), like
    torus_subject) as render_dataset renders the torus; the dict also holds `info` and `size`."""
    return _render(out_dir, views, size, samples, keep_scene, verbose, verbose_blender, subject,
                   elevation_range_deg)


def _render(out_dir, views, size, samples, keep_scene, verbose, verbose_blender, subject,
            elevation_range_deg):
    import bpy

    start = time.perf_counter()
    width, height = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
    if views < 1 or width < 8 or height < 8 or samples < 1:
        raise ValueError(f"need views >= 1, a size of at least 8x8 and samples >= 1, got {views}, "
                         f"{width}x{height}, {samples}")
    out_dir = os.path.abspath(out_dir)
    image_dir = os.path.join(out_dir, "images")
    if os.path.isdir(image_dir):
        shutil.rmtree(image_dir)
    os.makedirs(image_dir)

    scene, subject_obj, camera, ids, info = _build_scene(bpy, width, height, samples, subject)
    window = bpy.context.window
    previous = window.scene if window is not None else None
    digits = max(3, len(str(views - 1)))
    rig_views, images = [], []
    try:
        if window is not None:
            window.scene = scene
        vertices, faces = evaluated_triangles(scene, subject_obj)
        K = camera_intrinsics(camera.data, width, height)
        for k, position in enumerate(camera_positions(views, elevation_range_deg=elevation_range_deg)):
            camera.matrix_world = _matrix(look_at(position))
            path = os.path.join(image_dir, f"{k:0{digits}d}.png")
            render_still(scene, path, quiet=not verbose_blender)
            c2w = np.array(camera.matrix_world) @ OPENGL_TO_OPENCV
            rig_views.append(View(image_path=path, width=width, height=height, K=K.copy(), c2w=c2w,
                                  camera_id=f"{k:0{digits}d}"))
            images.append(path)
            if verbose:
                print(f"\r[scene] rendered {k + 1}/{views}", end="", flush=True)
        if verbose:
            print(flush=True)
    finally:
        if not keep_scene:
            if window is not None and previous is not None:
                window.scene = previous
            bpy.data.batch_remove(ids)

    transforms = os.path.join(out_dir, "transforms.json")
    write_transforms(Rig(name=os.path.basename(out_dir), path=transforms, views=rig_views), transforms)
    truth = os.path.join(out_dir, "truth.ply")
    write_ply(truth, vertices, faces)
    extent = vertices.max(axis=0) - vertices.min(axis=0)
    result = {"transforms": transforms, "truth": truth, "bbox_diagonal": float(np.linalg.norm(extent)),
              "vertices": vertices, "faces": faces, "images": images,
              "seconds": time.perf_counter() - start}
    if subject is not None:
        result.update(info=info, size=(width, height))
    return result


def render_still(scene, path, quiet=True):
    """Render `scene` from its camera into the image file `path` (format from the scene's settings)."""
    import bpy
    scene.render.filepath = path
    if os.path.exists(path):
        os.remove(path)
    with _quiet_stdout(quiet):
        bpy.ops.render.render(write_still=True, scene=scene.name)
    if not os.path.isfile(path):
        raise RuntimeError(f"Blender did not write {path}")


@contextlib.contextmanager
def _quiet_stdout(quiet=True):
    """Silence Blender's own per-render lines ("Fra:... Saved: ...") written to file descriptor 1."""
    if not quiet:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _matrix(array):
    from mathutils import Matrix
    return Matrix([list(map(float, row)) for row in array])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m demo.scene", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write images/, transforms.json and truth.ply into")
    parser.add_argument("--mesh", metavar="OBJ", help="render this OBJ mesh (scaled and centred) "
                        "instead of the torus")
    parser.add_argument("--views", type=int, help=f"number of cameras (default 40; {MESH_VIEWS} with --mesh)")
    parser.add_argument("--size", type=int, nargs="+", metavar="PX",
                        help=f"image size: one number (square) or width height (default 160; {MESH_SIZE} "
                             f"with --mesh)")
    parser.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel (default 16)")
    parser.add_argument("--diagonal", type=float, default=MESH_DIAGONAL,
                        help=f"with --mesh: the bounding-box diagonal it is scaled to (default {MESH_DIAGONAL})")
    args = parser.parse_args(argv)
    if args.size is not None and len(args.size) not in (1, 2):
        parser.error("--size takes one number or two (width height)")
    if args.mesh is not None and not os.path.isfile(args.mesh):
        parser.error(f"--mesh {args.mesh}: no such file")
    if args.size is None:
        args.size = [MESH_SIZE if args.mesh else 160]
    if args.views is None:
        args.views = MESH_VIEWS if args.mesh else 40
    size = (args.size[0], args.size[-1])
    if args.mesh:
        result = render_mesh_dataset(args.mesh, args.out_dir, views=args.views, size=size,
                                     samples=args.samples, diagonal=args.diagonal, verbose=True)
    else:
        result = render_dataset(args.out_dir, views=args.views, size=size, samples=args.samples, verbose=True)
    report("scene", f"{args.views} views at {size[0]}x{size[1]}, {args.samples} samples", result, [
        ("rig:  ", result["transforms"]),
        ("truth:", f"{result['truth']} ({len(result['vertices'])} vertices, {len(result['faces'])} triangles, "
                   f"bbox diagonal {result['bbox_diagonal']:.4f})")])
    return 0


def report(tag, what, result, lines):
    """The generators' closing lines: what was rendered in how long, then one line per output."""
    print(f"[{tag}] {what} in {result['seconds']:.1f} s")
    for label, text in lines:
        print(f"[{tag}] {label} {text}")


if __name__ == "__main__":
    sys.exit(main())
