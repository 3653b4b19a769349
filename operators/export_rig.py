# SPDX-License-Identifier: GPL-3.0-or-later
"""Export the scene's cameras as a rig (transforms.json), optionally rendering an image per camera."""
import os

import bpy
from bpy_extras.io_utils import ExportHelper

from ..addon import export

TIMER_SECONDS = 0.05  # between two rendered images in the UI, where Esc gets its chance


def _state(context):
    return context.window_manager.marble_export


def _begin(context, exporter):
    state = _state(context)
    state.state = 'running'
    state.progress, state.done, state.total = 0.0, 0, exporter.total
    state.camera, state.message, state.filepath = "", "", exporter.path
    context.window_manager.progress_begin(0, max(1, exporter.total))


def _update(context, exporter):
    state = _state(context)
    state.done = exporter.index
    state.progress = exporter.index / max(1, exporter.total)
    state.camera = exporter.items[exporter.index - 1].obj.name if exporter.index else ""
    context.window_manager.progress_update(exporter.index)
    _redraw(context)


def _end(context, state_name, message):
    state = _state(context)
    state.state = state_name
    state.message = message
    context.window_manager.progress_end()
    _redraw(context)


def _redraw(context):
    screen = getattr(context, "screen", None)
    for area in (screen.areas if screen is not None else ()):
        if area.type == 'VIEW_3D':
            area.tag_redraw()


class MARBLE_OT_export_rig(bpy.types.Operator, ExportHelper):
    """Export the scene's cameras to a transforms.json that Marble's engine (and instant-ngp, NeuS2,
    nerfstudio) reads; optionally render the scene through each camera into images/ beside it, which
    turns any Blender scene into a dataset"""
    bl_idname = "marble.export_rig"
    bl_label = "Export Rig"
    bl_options = {'REGISTER'}

    filename_ext = ".json"
    filter_glob: bpy.props.StringProperty(default="*.json", options={'HIDDEN'})
    use_selection: bpy.props.BoolProperty(
        name="Selected Only", default=False, description="Export only the selected cameras")
    render_images: bpy.props.BoolProperty(
        name="Render Images", default=False,
        description="Render the scene through each camera into images/ beside the file (Esc cancels; "
                    "a cancelled export writes no transforms.json)")
    transparent_background: bpy.props.BoolProperty(
        name="Transparent Background", default=True,
        description="Rendered images get a transparent background (RGBA): the alpha is the object mask "
                    "the engine trains with")

    _exporter = None
    _timer = None
    cancel_requested = False  # set by marble.cancel_export (the panel's button)
    rendering = False         # a modal export is under way (one at a time)

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "use_selection")
        layout.prop(self, "render_images")
        row = layout.row()
        row.enabled = self.render_images
        row.prop(self, "transparent_background")

    def invoke(self, context, event):
        if not self.filepath:
            blend = bpy.data.filepath
            self.filepath = os.path.join(os.path.dirname(blend) if blend else "", "transforms.json")
        return ExportHelper.invoke(self, context, event)

    def execute(self, context):
        if MARBLE_OT_export_rig.rendering:
            self.report({'ERROR'}, "A rig export is already rendering: wait for it or cancel it first")
            return {'CANCELLED'}
        cameras, warnings = export.export_cameras(context.scene, selected_only=self.use_selection)
        for warning in warnings:
            self.report({'WARNING'}, warning)
        try:
            exporter = export.RigExporter(context.scene, cameras, self.filepath,
                                          render_images=self.render_images,
                                          transparent=self.transparent_background)
        except export.ExportError as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        MARBLE_OT_export_rig.cancel_requested = False
        _begin(context, exporter)
        if self.render_images and context.window is not None and not bpy.app.background:
            # In the UI: one image per timer event, so the window stays alive and Esc can cancel.
            self._exporter = exporter
            MARBLE_OT_export_rig.rendering = True
            self._timer = context.window_manager.event_timer_add(TIMER_SECONDS, window=context.window)
            context.window_manager.modal_handler_add(self)
            return {'RUNNING_MODAL'}
        try:
            while not exporter.finished:
                exporter.step()
                _update(context, exporter)
            return self._finish(context, exporter)
        except Exception as exc:
            return self._fail(context, exporter, exc)

    def modal(self, context, event):
        exporter = self._exporter
        if (event.type == 'ESC' and event.value == 'PRESS') or MARBLE_OT_export_rig.cancel_requested:
            exporter.abort()
            self._stop(context)
            _end(context, 'cancelled', f"Cancelled after {exporter.index} of {exporter.total} images; "
                                       f"nothing was written")
            self.report({'WARNING'}, "Rig export cancelled: no transforms.json was written")
            return {'CANCELLED'}
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}  # the viewport and the panel's Cancel button stay usable
        try:
            exporter.step()
            _update(context, exporter)
            if not exporter.finished:
                return {'RUNNING_MODAL'}
            self._stop(context)
            return self._finish(context, exporter)
        except Exception as exc:
            self._stop(context)
            return self._fail(context, exporter, exc)

    def _stop(self, context):
        MARBLE_OT_export_rig.rendering = False
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None

    def _finish(self, context, exporter):
        try:
            rig = exporter.finish()
        except export.ExportError as exc:
            return self._fail(context, exporter, exc)
        rendered = ""
        if exporter.render_images:
            # A new dataset: Train now reconstructs it (the mesh goes where the cameras are).
            settings = context.scene.marble
            settings.rig_path = exporter.path
            collections = {c.name for item in exporter.items for c in item.obj.users_collection}
            only = bpy.data.collections.get(next(iter(collections))) if len(collections) == 1 else None
            settings.rig_collection = only
            rendered = f", {len(exporter.written)} images rendered; Train now uses this rig"
        message = f"Exported {len(rig.views)} views to {exporter.path}{rendered}"
        _end(context, 'done', message)
        self.report({'INFO'}, message)
        return {'FINISHED'}

    def _fail(self, context, exporter, exc):
        exporter.abort()
        message = f"Rig export failed: {exc}"
        _end(context, 'failed', message)
        self.report({'ERROR'}, message)
        return {'CANCELLED'}


class MARBLE_OT_cancel_export(bpy.types.Operator):
    """Stop rendering the rig's images (no transforms.json is written)"""
    bl_idname = "marble.cancel_export"
    bl_label = "Cancel Export"

    def execute(self, context):
        if _state(context).state != 'running':
            return {'CANCELLED'}
        MARBLE_OT_export_rig.cancel_requested = True
        return {'FINISHED'}


CLASSES = (MARBLE_OT_export_rig, MARBLE_OT_cancel_export)
