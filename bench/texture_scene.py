"""The texture benchmark's Blender side (the .venv's bpy module; bench.texture_measure drives it): a
mesh put into an empty scene, shaded by pure emission of its stored colour (the vertex colours of a
PLY, or a glTF file's baked image through its UVs), and rendered with Cycles from a rig's cameras.

Emission of the colour, the "Standard" view transform and no exposure or gamma change make each
pixel the colour the file stores (sRGB in the file, linear in Blender, sRGB again in the PNG); the
transparent film makes the alpha the rendered silhouette.
"""
import os

import numpy as np

from bench.meshes import srgb_to_linear
from demo.scene import plain_colour_output, render_still
from engine.io.ply import read_triangles
from engine.io.rig import OPENGL_TO_OPENCV

COLOUR_ATTRIBUTE = "Col"
SENSOR_WIDTH_MM = 36.0


def camera_settings(K, width, height):
    """Blender lens, sensor width, shifts and pixel aspect under which a horizontally fitted camera
    projects like K (pixel centres at +0.5, as the rig's K): u = F X/Z + W/2 - shift_x W and
    v = F/ycor Y/Z + H/2 + shift_y W/ycor with F = lens W / sensor and ycor = fx/fy."""
    K = np.asarray(K, dtype=float)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (np.isfinite(K).all() and fx > 0 and fy > 0):
        raise ValueError(f"unusable intrinsics fx={fx:g} fy={fy:g}")
    ycor = fx / fy
    return {"lens": fx * SENSOR_WIDTH_MM / width, "sensor_width": SENSOR_WIDTH_MM,
            "shift_x": (0.5 * width - cx) / width, "shift_y": (cy - 0.5 * height) * ycor / width,
            "pixel_aspect_x": 1.0 if ycor >= 1.0 else 1.0 / ycor, "pixel_aspect_y": ycor if ycor >= 1.0 else 1.0}


def _matrix(array):
    from mathutils import Matrix
    return Matrix([list(map(float, row)) for row in np.asarray(array)])


def empty_scene():
    """A new, empty scene holding nothing of what an earlier measurement made."""
    import bpy
    bpy.ops.wm.read_homefile(use_empty=True)
    return bpy.context.scene


def add_ply(scene, path):
    """The PLY (world coordinates, vertex colours) as an object in `scene`, shaded by emission of its
    vertex colours; returns (world vertices (N, 3), triangles (M, 3))."""
    import bpy
    vertices, faces, colours = read_triangles(path)
    if len(faces) == 0:
        raise ValueError(f"{path}: the mesh has no faces")
    if colours is None:
        raise ValueError(f"{path}: the mesh has no vertex colours")
    mesh = bpy.data.meshes.new(os.path.basename(path))
    mesh.from_pydata(vertices, [], faces)
    mesh.update()
    attribute = mesh.color_attributes.new(COLOUR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    rgba = np.ones((len(vertices), 4), dtype=np.float32)
    rgba[:, :3] = srgb_to_linear(colours)
    attribute.data.foreach_set("color", rgba.ravel())
    mesh.materials.append(_emission_material(bpy, "marble_texture_vertex_colours", attribute=COLOUR_ATTRIBUTE))
    obj = bpy.data.objects.new(mesh.name, mesh)
    scene.collection.objects.link(obj)
    return vertices, faces


def add_gltf(scene, path):
    """Import the glTF/glb file with Blender's importer and its default settings, then shade each of
    its meshes by emission of its base colour image through its UVs. Returns (world vertices, world
    triangles) of all its meshes together (the importer's Y-up to Z-up conversion applied)."""
    import bpy
    before = set(bpy.data.objects)
    result = bpy.ops.import_scene.gltf(filepath=os.path.abspath(path))
    if "FINISHED" not in result:
        raise ValueError(f"{path}: Blender's glTF importer failed ({result})")
    objects = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
    if not objects:
        raise ValueError(f"{path}: the file holds no mesh")
    for obj in objects:
        if obj.name not in scene.collection.all_objects:
            scene.collection.objects.link(obj)
    all_vertices, all_faces, offset = [], [], 0
    for obj in objects:
        image = _base_colour_image(obj)
        if image is None:
            raise ValueError(f"{path}: mesh '{obj.name}' has no image texture (no baked colours)")
        if not obj.data.uv_layers:
            raise ValueError(f"{path}: mesh '{obj.name}' has no UV map")
        material = _emission_material(bpy, "marble_texture_baked", image=image, uv_map=obj.data.uv_layers[0].name)
        obj.data.materials.clear()
        obj.data.materials.append(material)
        obj.data.polygons.foreach_set("material_index", np.zeros(len(obj.data.polygons), dtype=np.int32))
        mesh = obj.data
        mesh.calc_loop_triangles()
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
        mesh.vertices.foreach_get("co", co)
        tris = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int64)
        mesh.loop_triangles.foreach_get("vertices", tris)
        matrix = np.array(obj.matrix_world)
        all_vertices.append(co.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3])
        all_faces.append(tris.reshape(-1, 3) + offset)
        offset += len(mesh.vertices)
    return np.concatenate(all_vertices), np.concatenate(all_faces)


def _base_colour_image(obj):
    for material in obj.data.materials:
        if material is None or material.node_tree is None:
            continue
        for node in material.node_tree.nodes:
            if node.type == "TEX_IMAGE" and node.image is not None:
                return node.image
    return None


def _emission_material(bpy, name, attribute=None, image=None, uv_map=None):
    material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = 1.0
    if attribute:
        source = nodes.new("ShaderNodeAttribute")
        source.attribute_name = attribute
    else:
        source = nodes.new("ShaderNodeTexImage")
        source.image = image
        source.interpolation = "Linear"
        uv = nodes.new("ShaderNodeUVMap")
        uv.uv_map = uv_map
        links.new(uv.outputs["UV"], source.inputs["Vector"])
    links.new(source.outputs["Color"], emission.inputs["Color"])
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


def configure_render(scene, width, height, samples, filter_width):
    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y, render.resolution_percentage = int(width), int(height), 100
    render.film_transparent = True
    render.use_persistent_data = True
    render.use_compositing = False
    render.use_sequencer = False
    settings = render.image_settings
    settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGBA", "8"
    settings.compression = 15
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = int(samples)
    cycles.use_adaptive_sampling = False
    cycles.use_denoising = False
    cycles.seed = 0
    cycles.max_bounces = 0  # emission seen directly: no light paths to follow
    cycles.filter_width = float(filter_width)
    plain_colour_output(scene)


def add_camera(scene):
    """A camera object in `scene`, the scene's camera (horizontal sensor fit)."""
    import bpy
    data = bpy.data.cameras.new("marble_texture_camera")
    data.sensor_fit = "HORIZONTAL"
    camera = bpy.data.objects.new("marble_texture_camera", data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    return camera


def place_camera(scene, camera, view, samples=16, filter_width=0.5):
    """Set the camera and the scene's render settings so Blender renders exactly what the rig view
    sees (its K, its OpenCV camera-to-world, its size)."""
    settings = camera_settings(view.K, view.width, view.height)
    data = camera.data
    data.lens, data.sensor_width = settings["lens"], settings["sensor_width"]
    data.shift_x, data.shift_y = settings["shift_x"], settings["shift_y"]
    configure_render(scene, view.width, view.height, samples, filter_width)
    scene.render.pixel_aspect_x = settings["pixel_aspect_x"]
    scene.render.pixel_aspect_y = settings["pixel_aspect_y"]
    c2w = np.asarray(view.c2w, dtype=float)
    distance = float(np.linalg.norm(c2w[:3, 3])) or 1.0
    data.clip_start, data.clip_end = 1e-3 * distance, 1e3 * distance
    camera.matrix_world = _matrix(c2w @ OPENGL_TO_OPENCV)


def render_views(scene, views, out_dir, prefix, samples=16, filter_width=0.5):
    """Render `scene` from each rig view's camera into OUT_DIR/PREFIX_<view name>.png; returns the
    paths."""

    os.makedirs(out_dir, exist_ok=True)
    camera = add_camera(scene)
    paths = []
    for view in views:
        place_camera(scene, camera, view, samples, filter_width)
        path = os.path.join(out_dir, f"{prefix}_{view.name}.png")
        render_still(scene, os.path.abspath(path))
        paths.append(path)
    return paths


def bounding_box(vertices):
    vertices = np.asarray(vertices, dtype=np.float64)
    return vertices.min(axis=0), vertices.max(axis=0)


def box_mismatch(box, reference):
    """The largest difference between two boxes' corners, as a fraction of the reference's diagonal."""
    lo, hi = (np.asarray(c, dtype=float) for c in box)
    rlo, rhi = (np.asarray(c, dtype=float) for c in reference)
    diagonal = float(np.linalg.norm(rhi - rlo)) or 1.0
    return float(max(np.abs(lo - rlo).max(), np.abs(hi - rhi).max()) / diagonal)
