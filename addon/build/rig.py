# SPDX-License-Identifier: GPL-3.0-or-later
"""Rig -> cameras: one camera per view (static rig) or per physical camera with keyframes (dynamic rig),
in a new collection with the region empty, the scene's resolution and pixel aspect set to fit.

Everything is parsed and computed first and Blender data is created only afterwards, so a bad input
leaves nothing half-built behind. The camera maths are in addon.camera_math.
"""
import collections
import json
import os
import re

import bpy
import numpy as np
from mathutils import Matrix

from ...engine.io.region import initial_region
from ..camera_math import ANIMATED_LENS_KEYS, LENS_KEYS, blender_matrix, camera_settings
from . import blocks
from .region import build_region

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
    region_matrix, region_auto, region_warnings = initial_region(rig)
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
        region = build_region(f"{rig.name} region", region_matrix, region_auto, collection, created)
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
        blocks.remove(created)
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
        obj.matrix_world = Matrix(blender_matrix(view.c2w).tolist())
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
            location, rotation, _ = Matrix(blender_matrix(poses[i]).tolist()).decompose()
            if previous is not None and previous.dot(rotation) < 0.0:
                rotation.negate()  # the shorter way round, should anyone switch to linear keys
            previous = rotation
            locations.append(location[:])
            quaternions.append(rotation[:])
        obj.location, obj.rotation_quaternion = locations[0], quaternions[0]
        key_frames = [frames[i] for i in keys]
        blocks.keyframes(obj, "location", key_frames, locations, created)
        blocks.keyframes(obj, "rotation_quaternion", key_frames, quaternions, created)
    else:
        obj.matrix_world = Matrix(blender_matrix(poses[0]).tolist())
    lens = [[settings[id(v)][k] for k in ANIMATED_LENS_KEYS] for v in views]
    keys = _changes(lens)
    for j, key in enumerate(ANIMATED_LENS_KEYS):
        column = [lens[i][j] for i in keys]
        if keys and len(set(column)) > 1:
            blocks.keyframes(cam, key, [frames[i] for i in keys], [[c] for c in column], created)


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
