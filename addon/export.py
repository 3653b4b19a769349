# SPDX-License-Identifier: GPL-3.0-or-later
"""Blender cameras -> a rig (transforms.json), optionally rendering the scene through each camera.

K comes from each camera's lens, sensor, shift and the image size and pixel aspect
(camera_math.camera_intrinsics, the inverse of camera_settings); when the camera still has the settings
its own K (custom property, from an import) gives, that K is written as it was, so import -> export
-> import is exact. The pose is matrix_world @ diag(1, -1, -1, 1). Cameras of a dynamic rig (custom
property marble_frames) give one view per frame, evaluated at that frame. The region empty becomes the
rig's normalisation unless it is an untouched automatic estimate.

render_rig() and RigExporter are plain Python that tests drive; the operator (operators/export_rig.py)
steps the same RigExporter from a modal timer in the UI, so Esc cancels between images.
"""
import dataclasses
import json
import os
import re

import bpy
import numpy as np

from ..engine.io import rig as rigs
from . import camera_math
from .build import region as regions
from .build import rig as rig_build

IMAGES_DIR = "images"
IMAGE_EXTENSION = ".png"


class ExportError(Exception):
    """An export that cannot run; the message tells the user why."""


class ExportCancelled(Exception):
    """The export was cancelled; nothing was written (images rendered so far were removed)."""


def export_cameras(scene, selected_only=False):
    """The scene's perspective cameras in name order (only the selected ones on request), and warnings
    for cameras left out."""
    cameras, skipped = [], []
    for obj in sorted(scene.objects, key=lambda o: o.name):
        if obj.type != 'CAMERA' or (selected_only and not obj.select_get()):
            continue
        (cameras if obj.data.type == 'PERSP' else skipped).append(obj)
    warnings = []
    if skipped:
        warnings.append(f"{len(skipped)} non-perspective camera(s) left out (a rig needs perspective "
                        f"cameras): {', '.join(o.name for o in skipped[:5])}")
    return cameras, warnings


def transforms_path(path):
    """The transforms.json to write for `path` (a .json file, or a folder to hold transforms.json)."""
    path = os.path.abspath(bpy.path.abspath(path)) if path else ""
    if not path:
        raise ExportError("No file given to export the rig to")
    if os.path.isdir(path) or path.endswith(os.sep):
        path = os.path.join(path, "transforms.json")
    elif not path.lower().endswith(".json"):
        path += ".json"
    return path


@dataclasses.dataclass
class _Item:
    obj: object
    frame: int          # the scene frame to evaluate at, None: the current one
    entry: dict         # the stored view of a dynamic rig's camera at that frame, or None


def _safe_name(name):
    return re.sub(r'[\\:*?"<>|\x00-\x1f]', "_", name).strip("/") or "camera"


def _float_list(value, n):
    try:
        values = [float(x) for x in value]
    except (TypeError, ValueError):
        return None
    return values if len(values) == n and all(np.isfinite(values)) else None


class RigExporter:
    """One export, one camera view per step(): Blender cameras -> rig views (rendering each when asked),
    then finish() writes transforms.json, or abort() removes what was rendered.

    The scene's camera, frame and output settings are restored by finish() and abort().
    """

    def __init__(self, scene, cameras, path, render_images=False, transparent=True):
        self.scene = scene
        self.path = transforms_path(path)
        self.root = os.path.dirname(self.path)
        self.render_images = bool(render_images)
        self.transparent = bool(transparent)
        cameras = [obj for obj in cameras if obj.type == 'CAMERA' and obj.data.type == 'PERSP']
        if not cameras:
            raise ExportError("No perspective camera to export")
        if not os.path.isdir(self.root):
            raise ExportError(f"The folder {self.root} does not exist")
        if not os.access(self.root, os.W_OK):
            raise ExportError(f"The folder {self.root} is not writable")
        self.items = []
        for obj in cameras:
            entries = self._entries(obj)
            if entries:
                self.items += [_Item(obj, int(e["frame"]), e) for e in entries]
            else:
                self.items.append(_Item(obj, None, None))
        # The current frame first (static cameras), then frame by frame: few frame changes.
        self.items.sort(key=lambda item: (item.frame is not None, item.frame or 0))
        self.views, self.written, self.warnings = [], [], []
        self.index = 0
        self._saved = None

    @staticmethod
    def _entries(obj):
        text = obj.get(rig_build.PROP_FRAMES)
        if not text:
            return []
        try:
            entries = json.loads(text)
        except (TypeError, ValueError):
            return []
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("frame"), int)]

    @property
    def total(self):
        return len(self.items)

    @property
    def finished(self):
        return self.index >= len(self.items)

    # -- scene state ---------------------------------------------------------------------------

    def _save(self):
        if self._saved is not None:
            return
        render = self.scene.render
        settings = render.image_settings
        self._saved = {
            "camera": self.scene.camera, "frame": self.scene.frame_current,
            "filepath": render.filepath, "film_transparent": render.film_transparent,
            "use_file_extension": render.use_file_extension,
            "image": (settings.file_format, settings.color_mode, settings.color_depth),
        }
        if self.render_images:
            render.use_file_extension = True
            render.film_transparent = self.transparent
            settings.file_format = 'PNG'
            settings.color_mode = 'RGBA' if self.transparent else 'RGB'
            settings.color_depth = '8'

    def _restore(self):
        saved, self._saved = self._saved, None
        if saved is None:
            return
        render = self.scene.render
        render.filepath = saved["filepath"]
        render.film_transparent = saved["film_transparent"]
        render.use_file_extension = saved["use_file_extension"]
        settings = render.image_settings
        settings.file_format, settings.color_mode, settings.color_depth = saved["image"]
        try:
            self.scene.camera = saved["camera"]
        except ReferenceError:
            pass
        if self.scene.frame_current != saved["frame"]:
            self.scene.frame_set(saved["frame"])

    # -- one view ------------------------------------------------------------------------------

    def step(self):
        """Export (and render) the next view; returns the number of views done."""
        if self.finished:
            return self.index
        self._save()
        item = self.items[self.index]
        frame = item.frame if item.frame is not None else self._saved["frame"]
        if self.scene.frame_current != frame:
            self.scene.frame_set(frame)
        obj, entry = item.obj, item.entry
        if self.render_images:
            name = _safe_name(obj.name)
            stem = name if entry is None else f"{name}_{item.frame:06d}"
            image = os.path.join(self.root, IMAGES_DIR, stem + IMAGE_EXTENSION)
            render_camera(self.scene, obj, image)
            self.written.append(image)
            width, height = render_size(self.scene)
        elif entry is not None:
            image, width, height = entry.get("image"), entry.get("width"), entry.get("height")
        else:
            image = obj.get(rig_build.PROP_IMAGE)
            width, height = obj.data.get(rig_build.PROP_WIDTH), obj.data.get(rig_build.PROP_HEIGHT)
        if not image:
            image = os.path.join(self.root, IMAGES_DIR, _safe_name(obj.name) + IMAGE_EXTENSION)
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            width, height = render_size(self.scene)
        self.views.append(self._view(obj, entry, str(image), width, height, item.frame))
        self.index += 1
        return self.index

    def _view(self, obj, entry, image, width, height, frame):
        cam = obj.data
        source = entry if entry is not None else {
            "K": cam.get(rig_build.PROP_K), "width": cam.get(rig_build.PROP_WIDTH),
            "height": cam.get(rig_build.PROP_HEIGHT), "distortion": cam.get(rig_build.PROP_DISTORTION)}
        stored = _float_list(source.get("K"), 9) if source.get("K") is not None else None
        render = self.scene.render
        ycor = render.pixel_aspect_y / render.pixel_aspect_x
        K = None
        if stored is not None and (source.get("width"), source.get("height")) == (width, height):
            # Not edited since the import (with this pixel aspect): its photograph's own K, exactly.
            stored = np.array(stored).reshape(3, 3)
            if camera_math.settings_match(cam, stored, width, height, ycor):
                K = stored
        if K is None:  # what Blender shows at this size
            K = camera_math.camera_intrinsics(cam, width, height, render.pixel_aspect_x, render.pixel_aspect_y)
        distortion = _float_list(source.get("distortion"), 4) if source.get("distortion") is not None else None
        if distortion is not None and not any(distortion):
            distortion = None
        if frame is None:
            frame = obj.get(rig_build.PROP_FRAME, 0)
        fields = {"image_path": image, "width": int(width), "height": int(height), "K": np.asarray(K, dtype=float),
                  "c2w": camera_math.opencv_c2w(obj.matrix_world),
                  "distortion": None if distortion is None else np.array(distortion),
                  "camera_id": str(obj.get(rig_build.PROP_CAMERA_ID) or obj.name),
                  "frame": int(frame) if isinstance(frame, int) else 0}
        split = obj.get(rig_build.PROP_SPLIT)
        names = {f.name for f in dataclasses.fields(rigs.View)}
        if split and "split" in names:
            fields["split"] = str(split)
        return rigs.View(**{k: v for k, v in fields.items() if k in names})

    # -- the end -------------------------------------------------------------------------------

    def rig(self):
        """The rig of the views done so far, with the region as its normalisation when chosen."""
        region = regions.scene_region(self.scene)
        normalization = regions.similarity(region) if region is not None and regions.is_explicit(region) else None
        name = os.path.basename(self.root) or "rig"
        return rigs.Rig(name=name, path=self.path, views=list(self.views), normalization=normalization)

    def finish(self):
        """Write transforms.json (atomically: engine.io.rig writes a temporary file and renames it)."""
        self._restore()
        if not self.finished:
            raise ExportError("the export is not finished")
        rig = self.rig()
        try:
            rigs.write_transforms(rig, self.path)
        except OSError as exc:
            raise ExportError(f"Cannot write {self.path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # engine.io.rig.RigError: a view or the normalisation it refuses
            raise ExportError(str(exc)) from None
        return rig

    def abort(self):
        """Stop: restore the scene and remove the images this export rendered."""
        self._restore()
        for path in self.written:
            try:
                os.remove(path)
            except OSError:
                pass
        self.written = []


def render_size(scene):
    """The rendered image size (resolution times percentage, as Blender computes it)."""
    render = scene.render
    return (int(render.resolution_x * render.resolution_percentage / 100),
            int(render.resolution_y * render.resolution_percentage / 100))


def render_camera(scene, obj, path):
    """Render `scene` through camera `obj` into the PNG file `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scene.camera = obj
    scene.render.filepath = path
    if os.path.exists(path):
        os.remove(path)
    bpy.ops.render.render(write_still=True, scene=scene.name)
    if not os.path.isfile(path):
        raise ExportError(f"Blender did not write {path}")


def export_rig(scene, cameras, path, render_images=False, transparent=True, progress=None, should_cancel=None):
    """Export `cameras` of `scene` to the transforms.json `path`; returns the rig written.

    With `render_images`, each camera's view is rendered into images/ beside the json.
    `progress(done, total, camera_name)` is called after each view; when `should_cancel()` returns
    True (checked before each view) the export stops, removes the images it rendered, writes no
    transforms.json and raises ExportCancelled.
    """
    exporter = RigExporter(scene, cameras, path, render_images=render_images, transparent=transparent)
    try:
        while not exporter.finished:
            if should_cancel is not None and should_cancel():
                raise ExportCancelled(f"Export cancelled after {exporter.index} of {exporter.total} views")
            exporter.step()
            if progress is not None:
                progress(exporter.index, exporter.total, exporter.items[exporter.index - 1].obj.name)
        return exporter.finish()
    except BaseException:
        exporter.abort()
        raise


def render_rig(scene, cameras, folder, progress=None, should_cancel=None, transparent=True):
    """Render `scene` through each camera into folder/images/ and write folder/transforms.json.

    Returns the rig written. Cancelled (should_cancel() returned True): raises ExportCancelled,
    and neither transforms.json nor the images rendered so far are left behind.
    """
    os.makedirs(folder, exist_ok=True)
    return export_rig(scene, cameras, os.path.join(folder, "transforms.json"), render_images=True,
                      transparent=transparent, progress=progress, should_cancel=should_cancel)
