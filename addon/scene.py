# SPDX-License-Identifier: GPL-3.0-or-later
"""Scene builders (no operator logic): rig -> cameras, engine PLY -> mesh object.

Everything is parsed and computed first and Blender data is created only afterwards, so a bad input
leaves nothing half-built behind.
"""
import os

import bpy
import numpy as np
from mathutils import Matrix

from ..engine.plyio import PlyError as MeshError, read_ply
from ..engine.rig import OPENGL_TO_OPENCV

SENSOR_WIDTH = 36.0              # mm; any value works, the lens follows from it
COLOR_ATTRIBUTE = "Color"        # name of the vertex colour attribute of imported meshes
MATERIAL_NAME = "Marble Vertex Color"

# Custom properties written on each camera (data block: intrinsics; object: where it came from).
PROP_K = "marble_K"                    # 9 floats, row-major 3x3, pixels, pixel centres at +0.5
PROP_WIDTH = "marble_width"
PROP_HEIGHT = "marble_height"
PROP_DISTORTION = "marble_distortion"  # k1 k2 p1 p2 (all zero when the rig has none)
PROP_IMAGE = "marble_image"
PROP_CAMERA_ID = "marble_camera_id"
PROP_FRAME = "marble_frame"


# ---------------------------------------------------------------------------------------------
# Cameras

def camera_settings(K, width, height):
    """Blender camera and render settings under which Blender projects exactly like K.

    Blender (BKE_camera_params_compute_viewplane, horizontal sensor fit) maps a camera-space point
    to the pixel u = F*X/Z + W/2 - shift_x*W and, counting rows down, v = F/ycor*Y/Z + H/2 +
    shift_y*W/ycor, with F = lens*W/sensor_width and ycor = pixel_aspect_y/pixel_aspect_x (OpenCV
    axes). Matching u = fx*X/Z + cx and v = fy*Y/Z + cy gives the values below.
    """
    K = np.asarray(K, dtype=float)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    ycor = fx / fy
    # Blender keeps both pixel aspects >= 1; only their ratio matters.
    aspect_x, aspect_y = (1.0, ycor) if ycor >= 1.0 else (1.0 / ycor, 1.0)
    if max(aspect_x, aspect_y) > 200.0:
        raise ValueError(f"fx/fy = {ycor:g} is beyond Blender's pixel aspect range (1/200 to 200)")
    sensor_width = SENSOR_WIDTH
    lens = fx * sensor_width / width
    if lens < 1.0:  # Blender's minimum focal length: widen the sensor instead (same projection)
        sensor_width *= 1.0 / lens
        lens = 1.0
    return {
        "lens": lens,
        "sensor_width": sensor_width,
        "sensor_height": sensor_width * ycor * height / width,
        "shift_x": (0.5 * width - cx) / width,
        "shift_y": (cy - 0.5 * height) * ycor / width,
        "resolution_x": int(width),
        "resolution_y": int(height),
        "pixel_aspect_x": aspect_x,
        "pixel_aspect_y": aspect_y,
    }


def blender_matrix_world(c2w):
    """Blender's camera matrix (OpenGL axes: looks down -z, y up) from an OpenCV camera-to-world."""
    return Matrix((np.asarray(c2w, dtype=float) @ OPENGL_TO_OPENCV).tolist())


def build_rig(rig, scene):
    """Create a collection named after the rig with one camera per view; returns (collection, warnings).

    The scene's resolution and pixel aspect are set from the first view (Blender has one resolution
    per scene); each camera keeps its own K, size and distortion as custom properties.
    """
    if not rig.views:
        raise ValueError(f"{rig.path}: the rig has no views")
    settings = [camera_settings(v.K, v.width, v.height) for v in rig.views]
    warnings = list(rig.warnings)
    first = settings[0]
    keys = ("resolution_x", "resolution_y", "pixel_aspect_x", "pixel_aspect_y")
    mismatched = sum(1 for s in settings if any(abs(s[k] - first[k]) > 1e-9 for k in keys))
    if mismatched:
        warnings.append(f"{mismatched} of {len(settings)} views differ in image size or fx/fy from the "
                        f"first one; the scene resolution follows the first view, so those cameras "
                        f"frame their images exactly only at their own size (kept in '{PROP_WIDTH}', "
                        f"'{PROP_HEIGHT}')")
    centres = np.array([np.asarray(v.c2w, dtype=float)[:3, 3] for v in rig.views])
    span = float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max()) if len(centres) > 1 else 0.0

    created = []  # everything made so far, removed again if anything below fails
    collection = bpy.data.collections.new(rig.name)
    created.append(collection)
    try:
        scene.collection.children.link(collection)
        for view, s in zip(rig.views, settings):
            cam = bpy.data.cameras.new(view.name)
            created.append(cam)
            cam.type = 'PERSP'
            cam.sensor_fit = 'HORIZONTAL'
            cam.sensor_width = s["sensor_width"]
            cam.sensor_height = s["sensor_height"]
            cam.lens = s["lens"]
            cam.shift_x = s["shift_x"]
            cam.shift_y = s["shift_y"]
            if span > 0.0:  # keep cameras readable and the subject inside the clip range
                cam.display_size = max(0.01, 0.1 * span)
                cam.clip_start = min(cam.clip_start, 0.01 * span)
                cam.clip_end = max(cam.clip_end, 10.0 * span)
            cam[PROP_K] = [float(x) for x in np.asarray(view.K, dtype=float).ravel()]
            cam[PROP_WIDTH] = int(view.width)
            cam[PROP_HEIGHT] = int(view.height)
            distortion = view.distortion if view.distortion is not None else np.zeros(4)
            cam[PROP_DISTORTION] = [float(x) for x in np.asarray(distortion, dtype=float).ravel()]
            _add_background(cam, view.image_path, created)

            obj = bpy.data.objects.new(view.name, cam)
            created.append(obj)
            obj.matrix_world = blender_matrix_world(view.c2w)
            obj[PROP_IMAGE] = view.image_path
            obj[PROP_CAMERA_ID] = str(view.camera_id)
            obj[PROP_FRAME] = int(view.frame)
            collection.objects.link(obj)

        render = scene.render
        render.resolution_x = first["resolution_x"]
        render.resolution_y = first["resolution_y"]
        render.resolution_percentage = 100
        render.pixel_aspect_x = first["pixel_aspect_x"]
        render.pixel_aspect_y = first["pixel_aspect_y"]
        if scene.camera is None:
            scene.camera = collection.objects[0]
    except Exception:
        _remove(created)
        raise
    return collection, warnings


def _add_background(cam, image_path, created):
    # The photograph behind the camera view shows at a glance whether the camera lines up.
    try:
        image = bpy.data.images.load(image_path, check_existing=True)
    except RuntimeError:
        return
    if image.users == 0:
        created.append(image)
    bg = cam.background_images.new()
    bg.image = image
    bg.frame_method = 'STRETCH'
    bg.alpha = 1.0
    cam.show_background_images = True


def _remove(ids):
    for block in reversed(ids):
        try:
            if isinstance(block, bpy.types.Object):
                bpy.data.objects.remove(block)
            elif isinstance(block, bpy.types.Camera):
                bpy.data.cameras.remove(block)
            elif isinstance(block, bpy.types.Collection):
                bpy.data.collections.remove(block)
            elif isinstance(block, bpy.types.Image):
                bpy.data.images.remove(block)
            elif isinstance(block, bpy.types.Mesh):
                bpy.data.meshes.remove(block)
        except ReferenceError:
            pass  # already gone with its owner


def rig_cameras(collection):
    """The camera objects of a rig collection."""
    if collection is None:
        return []
    return [obj for obj in collection.objects if obj.type == 'CAMERA']


# ---------------------------------------------------------------------------------------------
# Meshes

def build_mesh(path, collection, name=None):
    """Import the PLY at `path` as a new object linked into `collection`; returns the object.

    Vertex colours become the point colour attribute "Color" (sRGB bytes, as the file stores them)
    and the object gets a material that shows that attribute.
    """
    vertices, starts, loops, colours = read_ply(path)
    name = name or os.path.splitext(os.path.basename(path))[0]
    mesh = bpy.data.meshes.new(name)
    try:
        mesh.vertices.add(len(vertices))
        mesh.vertices.foreach_set("co", vertices.ravel())
        if len(starts):
            mesh.loops.add(len(loops))
            mesh.loops.foreach_set("vertex_index", loops)
            mesh.polygons.add(len(starts))
            mesh.polygons.foreach_set("loop_start", starts)
        mesh.update(calc_edges=True)
        if len(starts):
            if hasattr(mesh, "shade_smooth"):  # Blender 4.1+
                mesh.shade_smooth()
            else:
                mesh.polygons.foreach_set("use_smooth", np.ones(len(starts), dtype=bool))
        if colours is not None:
            rgba = np.ones((len(vertices), 4), dtype=np.float32)
            rgba[:, :colours.shape[1]] = colours / np.float32(255.0)
            attribute = mesh.color_attributes.new(COLOR_ATTRIBUTE, 'BYTE_COLOR', 'POINT')
            attribute.data.foreach_set("color_srgb", rgba.ravel())
            mesh.color_attributes.active_color = attribute
            mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
            mesh.materials.append(vertex_color_material())
        obj = bpy.data.objects.new(name, mesh)
        collection.objects.link(obj)
    except Exception:
        _remove([mesh])
        raise
    return obj


def vertex_color_material():
    """A material that shades with the mesh's "Color" attribute (shared by all imported meshes)."""
    material = bpy.data.materials.get(MATERIAL_NAME)
    if material is not None:
        return material
    material = bpy.data.materials.new(MATERIAL_NAME)
    if bpy.app.version < (5, 0, 0):  # node trees are always on (use_nodes deprecated) from 5.0
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next((n for n in nodes if n.type == 'BSDF_PRINCIPLED'), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        output = next((n for n in nodes if n.type == 'OUTPUT_MATERIAL'), None) or nodes.new("ShaderNodeOutputMaterial")
        links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
    color = nodes.new("ShaderNodeVertexColor")
    color.layer_name = COLOR_ATTRIBUTE
    color.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(color.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.8
    return material
