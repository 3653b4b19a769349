# SPDX-License-Identifier: GPL-3.0-or-later
"""Scene builders (no operator logic): rig -> cameras (and the region empty), engine PLY -> mesh object.

Everything is parsed and computed first and Blender data is created only afterwards, so a bad input
leaves nothing half-built behind. The camera conversions in both directions (K -> Blender camera and
Blender camera -> K, OpenCV c2w <-> matrix_world) sit side by side in the first section.
"""
import collections
import json
import math
import os
import re

import bpy
import numpy as np
from mathutils import Matrix

from ..engine.io.ply import PlyError as MeshError, read_ply
from ..engine.io.rig import OPENGL_TO_OPENCV
from . import region as regions

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
PROP_SPLIT = "marble_split"            # "train", "val", "test" or absent
# Dynamic rigs: on the object, JSON list of the camera's views, one per frame: {"frame", "image", "K"
# (9 floats), "width", "height", "distortion" (4 floats or null)}.
PROP_FRAMES = "marble_frames"
# On the rig's collection: what was imported.
PROP_VIEW_COUNT = "marble_views"
PROP_FRAME_COUNT = "marble_frame_count"
PROP_FORMAT = "marble_format"

# Camera data properties that camera_settings() decides, and keyframes for dynamic rigs.
LENS_KEYS = ("lens", "sensor_width", "sensor_height", "shift_x", "shift_y")
ANIMATED_LENS_KEYS = ("lens", "sensor_width", "shift_x", "shift_y")  # sensor_height: unused by a horizontal fit

# ---------------------------------------------------------------------------------------------
# Cameras: both directions of the conversion between K / c2w and Blender

def camera_settings(K, width, height, ycor=None):
    """Blender camera and render settings under which Blender projects exactly like K.

    Blender (BKE_camera_params_compute_viewplane, horizontal sensor fit) maps a camera-space point
    to the pixel u = F*X/Z + W/2 - shift_x*W and, counting rows down, v = F/ycor*Y/Z + H/2 +
    shift_y*W/ycor, with F = lens*W/sensor_width and ycor = pixel_aspect_y/pixel_aspect_x (OpenCV
    axes). Matching u = fx*X/Z + cx and v = fy*Y/Z + cy gives the values below, with ycor = fx/fy.
    The pixel aspect is the scene's, one for all cameras: `ycor` imposes another ratio (fx and the
    principal point stay exact, fy becomes fx/ycor). camera_intrinsics() is the inverse.
    """
    K = np.asarray(K, dtype=float)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (np.isfinite(K).all() and fx > 0 and fy > 0 and width > 0 and height > 0):
        raise ValueError(f"unusable intrinsics fx={fx:g} fy={fy:g} for a {width}x{height} image")
    ycor = fx / fy if ycor is None else float(ycor)
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


def camera_intrinsics(cam, width, height, pixel_aspect_x=1.0, pixel_aspect_y=1.0):
    """K (3x3, pixels, pixel centres at +0.5) of Blender camera data `cam` rendering `width` x `height`
    pixels with the given pixel aspect: the inverse of camera_settings(), for every sensor fit.

    As in BKE_camera_params_compute_viewplane: the fit (AUTO: horizontal when aspect_x*W >=
    aspect_y*H) picks viewfac = W or ycor*H; the sensor size is sensor_height for a vertical fit and
    sensor_width otherwise (AUTO included); F = lens/sensor*viewfac, fx = F, fy = F/ycor,
    cx = W/2 - shift_x*viewfac, cy = H/2 + shift_y*viewfac/ycor.
    """
    if cam.type != 'PERSP':
        raise ValueError(f"camera '{cam.name}' is {cam.type.lower()}: only perspective cameras have a K")
    width, height = float(width), float(height)
    ycor = pixel_aspect_y / pixel_aspect_x
    fit = cam.sensor_fit
    sensor = cam.sensor_height if fit == 'VERTICAL' else cam.sensor_width
    if fit == 'AUTO':
        fit = 'HORIZONTAL' if pixel_aspect_x * width >= pixel_aspect_y * height else 'VERTICAL'
    viewfac = width if fit == 'HORIZONTAL' else ycor * height
    f = cam.lens / sensor * viewfac
    return np.array([[f, 0.0, 0.5 * width - cam.shift_x * viewfac],
                     [0.0, f / ycor, 0.5 * height + cam.shift_y * viewfac / ycor],
                     [0.0, 0.0, 1.0]])


def settings_match(cam, K, width, height, ycor=None):
    """True when `cam`'s lens, sensor and shift are still what camera_settings(K, width, height, ycor)
    gives (the camera was not edited since it was made from K), to float32 precision."""
    if cam.type != 'PERSP' or cam.sensor_fit != 'HORIZONTAL':
        return False
    try:
        s = camera_settings(K, width, height, ycor)
    except ValueError:
        return False
    return (math.isclose(cam.lens, s["lens"], rel_tol=1e-6)
            and math.isclose(cam.sensor_width, s["sensor_width"], rel_tol=1e-6)
            and abs(cam.shift_x - s["shift_x"]) <= 1e-6 and abs(cam.shift_y - s["shift_y"]) <= 1e-6)


def blender_matrix_world(c2w):
    """Blender's camera matrix (OpenGL axes: looks down -z, y up) from an OpenCV camera-to-world."""
    return Matrix((np.asarray(c2w, dtype=float) @ OPENGL_TO_OPENCV).tolist())


def opencv_c2w(matrix_world):
    """OpenCV camera-to-world from a Blender camera's matrix_world (the inverse of blender_matrix_world).

    Blender renders through the normalised matrix (object scale does not zoom a camera), so the
    axes are normalised here too.
    """
    m = np.array(matrix_world, dtype=float)
    m[:3, :3] /= np.linalg.norm(m[:3, :3], axis=0)
    return m @ OPENGL_TO_OPENCV


# ---------------------------------------------------------------------------------------------
# Rig -> cameras

RigBuild = collections.namedtuple("RigBuild", "collection cameras region warnings")


def is_dynamic(rig):
    """A rig with more than one distinct frame (Rig.is_dynamic when the reader provides it)."""
    value = getattr(rig, "is_dynamic", None)
    if value is None:
        value = len({int(v.frame) for v in rig.views}) > 1
    return bool(value)


def view_names(views):
    """Camera names for a static rig's views: their image stems, or, where stems repeat (NeRF
    synthetic's train/r_0 and test/r_0), the image path below the folder the images share."""
    stems = [v.name for v in views]
    counts = collections.Counter(stems)
    if all(c == 1 for c in counts.values()):
        return stems
    paths = [os.path.splitext(os.path.abspath(v.image_path))[0] for v in views]
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return [stem if counts[stem] == 1 else os.path.relpath(path, root).replace(os.sep, "/")
            for stem, path in zip(stems, paths)]


def camera_groups(rig):
    """[(camera name, views in frame order)]: one camera per view for a static rig; one per physical
    camera (View.camera_id) for a dynamic one. Also returns warnings."""
    if not is_dynamic(rig):
        return [(name, [view]) for name, view in zip(view_names(rig.views), rig.views)], []
    groups = {}
    for view in rig.views:
        groups.setdefault(str(view.camera_id or view.name), []).append(view)
    result, dropped = [], 0
    for name, views in groups.items():
        views = sorted(views, key=lambda v: int(v.frame))  # stable: the first of duplicates wins
        unique = [views[0]] + [b for a, b in zip(views, views[1:]) if int(b.frame) != int(a.frame)]
        dropped += len(views) - len(unique)
        result.append((name, unique))
    warnings = []
    if dropped:
        warnings.append(f"{rig.path}: {dropped} views repeat a (camera, frame) pair already seen; "
                        f"only the first of each was imported")
    return result, warnings


def build_rig(rig, scene, background_images=True):
    """Cameras for `rig` in a new collection named after it, plus its region empty; returns a RigBuild.

    A static rig makes one camera per view, named after its image. A dynamic rig (several frames)
    makes one camera per physical camera, posed from its first frame, with constant keyframes on
    location/rotation and lens/shift at the frames where they change, and sets the scene's frame
    range. Blender has one resolution and one pixel aspect per scene: the resolution is the most
    common image size and the pixel aspect the median fx/fy (warnings say when views differ); each
    camera keeps its own K, size and distortion as custom properties.
    """
    if not rig.views:
        raise ValueError(f"{rig.path}: the rig has no views")
    dynamic = is_dynamic(rig)
    groups, warnings = camera_groups(rig)
    warnings = list(rig.warnings) + warnings
    views = [view for _, group in groups for view in group]
    ycor, aspect_warnings = scene_pixel_aspect(views)
    warnings += aspect_warnings
    settings = {}
    for name, group in groups:
        for view in group:
            try:
                settings[id(view)] = camera_settings(view.K, view.width, view.height, ycor)
            except ValueError as exc:
                raise ValueError(f"{rig.path}: camera '{name}' (frame {view.frame}): {exc}") from None
    # The scene's resolution: the most common image size (the first view's among equals).
    sizes = collections.Counter((int(v.width), int(v.height)) for v in views)
    size = sizes.most_common(1)[0][0]  # equal counts: in order of first appearance
    first = dict(settings[id(next(v for v in views if (v.width, v.height) == size))])
    mismatched = len(views) - sizes[size]
    if mismatched:
        warnings.append(f"{mismatched} of {len(views)} views differ in image size from the scene resolution "
                        f"{size[0]}x{size[1]} (the most common size; Blender has one per scene): those "
                        f"cameras frame their photographs exactly only at their own size (kept in "
                        f"'{PROP_WIDTH}', '{PROP_HEIGHT}')")
    region_matrix, region_auto, region_warnings = regions.initial_region(rig)
    warnings += region_warnings
    centres = np.array([np.asarray(v.c2w, dtype=float)[:3, 3] for v in rig.views])
    span = float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max()) if len(centres) > 1 else 0.0
    frames = sorted({int(v.frame) for v in rig.views})

    created = []  # everything made so far, removed again if anything below fails
    try:
        collection = bpy.data.collections.new(rig.name)
        created.append(collection)
        scene.collection.children.link(collection)
        images = _ImageCache(created) if background_images else None
        cameras = []
        for name, group in groups:
            obj = _build_camera(name, group, settings, span, images, dynamic, created)
            collection.objects.link(obj)
            cameras.append(obj)
        region = regions.build_region(f"{rig.name} region", region_matrix, region_auto, collection, created)
        collection[PROP_VIEW_COUNT] = len(rig.views)
        collection[PROP_FRAME_COUNT] = len(frames)
        collection[PROP_FORMAT] = str(getattr(rig, "format", "") or "")

        render = scene.render
        render.resolution_x = first["resolution_x"]
        render.resolution_y = first["resolution_y"]
        render.resolution_percentage = 100
        render.pixel_aspect_x = first["pixel_aspect_x"]
        render.pixel_aspect_y = first["pixel_aspect_y"]
        if dynamic:
            scene.frame_start = frames[0]
            scene.frame_end = frames[-1]
            scene.frame_current = frames[0]
        if scene.camera is None:
            scene.camera = cameras[0]
    except Exception:
        _remove(created)
        raise
    return RigBuild(collection, cameras, region, warnings)


def scene_pixel_aspect(views):
    """(ycor = fx/fy for the scene, warnings): the median over the views. Blender has one pixel
    aspect per scene, so views whose fx/fy differ get fy = fx/ycor; a warning tells how far off that
    puts them (at the image's top or bottom edge) when it is more than 0.01 px."""
    ratios = np.array([float(v.K[0][0]) / float(v.K[1][1]) for v in views])
    ycor = float(np.median(ratios))
    if np.all(ratios == ycor):
        return ycor, []
    errors = []
    for view, ratio in zip(views, ratios):
        fy, cy = float(view.K[1][1]), float(view.K[1][2])
        errors.append(abs(fy * ratio / ycor - fy) * max(cy, view.height - cy) / fy)
    worst = max(errors)
    if worst <= 0.01:
        return ycor, []
    off = sum(1 for e in errors if e > 0.01)
    return ycor, [f"fx/fy differs between views ({ratios.min():.6g} to {ratios.max():.6g}); Blender has one "
                  f"pixel aspect per scene (set to the median, {ycor:.6g}), so {off} of {len(views)} "
                  f"cameras are off by up to {worst:.3g} px vertically at the image's edge (their exact K is "
                  f"kept in '{PROP_K}')"]


def _apply_settings(cam, s):
    cam.type = 'PERSP'
    cam.sensor_fit = 'HORIZONTAL'
    for key in LENS_KEYS:
        setattr(cam, key, s[key])


def _intrinsics_entry(view):
    distortion = view.distortion
    return {"frame": int(view.frame), "image": view.image_path,
            "K": [float(x) for x in np.asarray(view.K, dtype=float).ravel()],
            "width": int(view.width), "height": int(view.height),
            "distortion": None if distortion is None else [float(x) for x in np.ravel(distortion)]}


def _build_camera(name, views, settings, span, images, dynamic, created):
    view = views[0]
    cam = bpy.data.cameras.new(name)
    created.append(cam)
    _apply_settings(cam, settings[id(view)])
    if span > 0.0:  # keep cameras readable and the subject inside the clip range
        cam.display_size = max(0.01, 0.1 * span)
        cam.clip_start = min(cam.clip_start, 0.01 * span)
        cam.clip_end = max(cam.clip_end, 10.0 * span)
    cam[PROP_K] = [float(x) for x in np.asarray(view.K, dtype=float).ravel()]
    cam[PROP_WIDTH] = int(view.width)
    cam[PROP_HEIGHT] = int(view.height)
    distortion = view.distortion if view.distortion is not None else np.zeros(4)
    cam[PROP_DISTORTION] = [float(x) for x in np.asarray(distortion, dtype=float).ravel()]
    if images is not None:
        sequence = image_sequence(views) if dynamic else None
        image = images.get(view.image_path, sequence=sequence is not None)
        if image is not None:
            bg = cam.background_images.new()
            bg.image = image
            bg.frame_method = 'STRETCH'
            bg.alpha = 1.0
            if sequence is not None:
                # Blender shows file number (frame - frame_start + 1 + frame_offset) at each frame.
                start, offset, duration = sequence
                bg.image_user.frame_start = start
                bg.image_user.frame_offset = offset
                bg.image_user.frame_duration = duration
                bg.image_user.use_auto_refresh = True
            cam.show_background_images = True

    obj = bpy.data.objects.new(name, cam)
    created.append(obj)
    obj[PROP_IMAGE] = view.image_path
    obj[PROP_CAMERA_ID] = str(view.camera_id or name)
    obj[PROP_FRAME] = int(view.frame)
    split = getattr(view, "split", "")
    if split:
        obj[PROP_SPLIT] = str(split)
    if dynamic:
        obj[PROP_FRAMES] = json.dumps([_intrinsics_entry(v) for v in views])
        _animate(obj, cam, views, settings, created)
    else:
        obj.matrix_world = blender_matrix_world(view.c2w)
    return obj


def image_sequence(views):
    """(frame_start, frame_offset, frame_duration) for showing a dynamic camera's photographs as one
    Blender image sequence, or None when they are not one.

    They are when every frame's image lies in the same folder and their names differ only in the last
    group of digits (of one width), which is the frame number plus a constant: Blender then finds
    each frame's file by itself (numbers = frame - frame_start + 1 + frame_offset).
    """
    if len(views) < 2:
        return None
    parts = []
    for view in views:
        folder, name = os.path.split(os.path.abspath(view.image_path))
        match = _LAST_DIGITS.match(name)
        if match is None:
            return None
        parts.append((folder, match.group(1), len(match.group(2)), match.group(3), int(match.group(2))))
    if len({p[:4] for p in parts}) != 1:
        return None
    frames = [int(v.frame) for v in views]
    shifts = {number - frame for (*_, number), frame in zip(parts, frames)}
    if len(shifts) != 1:
        return None
    first = min(frames)
    return first, first + shifts.pop() - 1, max(frames) - first + 1


_LAST_DIGITS = re.compile(r"^(.*?)(\d+)(\D*)$")


def _changes(values):
    """Indices where `values` (one row per frame) differ from the row before; [] when they never do."""
    values = np.asarray(values, dtype=float)
    changed = [i for i in range(1, len(values)) if not np.array_equal(values[i], values[i - 1])]
    return [0] + changed if changed else []


def _animate(obj, cam, views, settings, created):
    """Pose and intrinsics of a dynamic camera: its first frame, plus constant keyframes where they change."""
    frames = [int(v.frame) for v in views]
    poses = [np.asarray(v.c2w, dtype=float) for v in views]
    keys = _changes([p.ravel() for p in poses])
    if keys:
        obj.rotation_mode = 'QUATERNION'
        locations, quaternions, previous = [], [], None
        for i in keys:
            location, rotation, _ = blender_matrix_world(poses[i]).decompose()
            if previous is not None and previous.dot(rotation) < 0.0:
                rotation.negate()  # the shorter way round, should anyone switch to linear keys
            previous = rotation
            locations.append(location[:])
            quaternions.append(rotation[:])
        obj.location, obj.rotation_quaternion = locations[0], quaternions[0]
        key_frames = [frames[i] for i in keys]
        _keyframes(obj, "location", key_frames, locations, created)
        _keyframes(obj, "rotation_quaternion", key_frames, quaternions, created)
    else:
        obj.matrix_world = blender_matrix_world(poses[0])
    lens = [[settings[id(v)][k] for k in ANIMATED_LENS_KEYS] for v in views]
    keys = _changes(lens)
    for j, key in enumerate(ANIMATED_LENS_KEYS):
        column = [lens[i][j] for i in keys]
        if keys and len(set(column)) > 1:
            _keyframes(cam, key, [frames[i] for i in keys], [[c] for c in column], created)


def _keyframes(id_block, data_path, frames, values, created):
    """Constant-interpolation keyframes on `id_block.data_path` (one F-curve per component)."""
    anim = id_block.animation_data or id_block.animation_data_create()
    action = anim.action
    if action is None:
        action = bpy.data.actions.new(f"{id_block.name} frames")
        created.append(action)
        anim.action = action
    values = np.asarray(values, dtype=float)
    for index in range(values.shape[1]):
        if hasattr(action, "fcurve_ensure_for_datablock"):  # Blender 4.4+: layered actions
            fcurve = action.fcurve_ensure_for_datablock(id_block, data_path, index=index)
        else:
            fcurve = action.fcurves.new(data_path, index=index)
        points = fcurve.keyframe_points
        points.add(len(frames))
        points.foreach_set("co", np.column_stack([frames, values[:, index]]).astype(np.float32).ravel())
        for point in points:
            point.interpolation = 'CONSTANT'
        fcurve.update()


class _ImageCache:
    """Images by absolute path: each photograph loaded once (also across imports), without Blender's
    check_existing, which scans every image for every load."""

    def __init__(self, created):
        self.created = created
        self.images = {}
        for image in bpy.data.images:
            if image.source in ('FILE', 'SEQUENCE') and image.filepath and not image.library:
                path = os.path.normpath(bpy.path.abspath(image.filepath))
                self.images[("sequence", path) if image.source == 'SEQUENCE' else path] = image

    def get(self, path, sequence=False):
        # The photograph behind the camera view shows at a glance whether the camera lines up.
        path = os.path.normpath(os.path.abspath(path))
        key = ("sequence", path) if sequence else path
        image = self.images.get(key)
        if image is None:
            try:
                image = bpy.data.images.load(path, check_existing=False)
            except RuntimeError:
                return None
            self.created.append(image)
            if sequence:
                image.source = 'SEQUENCE'
            self.images[key] = image
        return image


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
            elif isinstance(block, bpy.types.Action):
                bpy.data.actions.remove(block)
        except ReferenceError:
            pass  # already gone with its owner


def rig_cameras(collection):
    """The camera objects of a rig collection."""
    if collection is None:
        return []
    return [obj for obj in collection.objects if obj.type == 'CAMERA']


def rig_summary(collection):
    """(cameras, frames) of an imported rig collection, for the panel."""
    if collection is None:
        return 0, 0
    return len(rig_cameras(collection)), int(collection.get(PROP_FRAME_COUNT, 1))


# ---------------------------------------------------------------------------------------------
# Meshes

def mesh_from_ply(path, name=None):
    """A new mesh datablock from the PLY at `path` (no object); see mesh_from_arrays."""
    return mesh_from_arrays(name or os.path.splitext(os.path.basename(path))[0], read_ply(path))


def mesh_from_arrays(name, arrays):
    """A new mesh datablock from read_ply's (vertices, face starts, loops, colours).

    Vertex colours become the point colour attribute "Color" (sRGB bytes, as the file stores them)
    and the mesh gets a material that shows that attribute.
    """
    vertices, starts, loops, colours = arrays
    mesh = bpy.data.meshes.new(name)
    try:
        mesh.vertices.add(len(vertices))
        # The generic attributes take a whole array at once (Blender 4.0+); vertices.co and
        # loops.vertex_index go element by element, about 100 times slower.
        _set_array(mesh, "position", 'FLOAT_VECTOR', "vector", vertices.ravel(), mesh.vertices, "co")
        if len(starts):
            mesh.loops.add(len(loops))
            _set_array(mesh, ".corner_vert", 'INT', "value", loops, mesh.loops, "vertex_index")
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
    except Exception:
        _remove([mesh])
        raise
    return mesh


def _set_array(mesh, name, data_type, field, values, fallback, fallback_field):
    """Write `values` into the mesh's attribute `name` when it has one of `data_type` and the right
    size, else element by element into `fallback`.`fallback_field`."""
    attribute = mesh.attributes.get(name)
    width = 3 if data_type == 'FLOAT_VECTOR' else 1
    if attribute is not None and attribute.data_type == data_type and len(attribute.data) * width == len(values):
        attribute.data.foreach_set(field, values)
    else:
        fallback.foreach_set(fallback_field, values)


def build_mesh(path, collection, name=None):
    """Import the PLY at `path` as a new object linked into `collection`; returns the object."""
    mesh = mesh_from_ply(path, name)
    try:
        obj = bpy.data.objects.new(mesh.name if name is None else name, mesh)
        collection.objects.link(obj)
    except Exception:
        _remove([mesh])
        raise
    return obj


def show_color_attributes(window_manager):
    """Make Solid shading in every 3D viewport show colour attributes (Solid mode ignores materials'
    node colours): the imported meshes' vertex colours show there as in Material Preview."""
    count = 0
    for window in getattr(window_manager, "windows", []):
        screen = window.screen
        for area in (screen.areas if screen is not None else []):
            for space in area.spaces:
                if space.type == 'VIEW_3D':
                    # Called 'VERTEX' in the API though the interface says "Attribute".
                    choices = space.shading.bl_rna.properties["color_type"].enum_items.keys()
                    space.shading.color_type = 'ATTRIBUTE' if 'ATTRIBUTE' in choices else 'VERTEX'
                    count += 1
    return count


def replace_mesh(obj, path):
    """Give `obj` the mesh of the PLY at `path` in place of its own (same object, new mesh data; the
    old mesh is freed). The file is read first: a bad file leaves the object as it was."""
    mesh = mesh_from_ply(path, obj.data.name if obj.data is not None else None)
    old = obj.data
    obj.data = mesh
    if old is not None and old.users == 0:
        bpy.data.meshes.remove(old)
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
