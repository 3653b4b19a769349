# SPDX-License-Identifier: GPL-3.0-or-later
"""View3D > Sidebar > Marble: rig, training settings, live progress, results."""
import textwrap

import bpy

from ..addon import jobs
from ..addon import region as regions
from ..addon import scene as builders

ACTIVE_STATES = {'running', 'cancelling'}
EXPORT_ICONS = {'running': 'RENDER_STILL', 'cancelled': 'CANCEL', 'failed': 'ERROR', 'done': 'CHECKMARK'}
STATE_ICONS = {'idle': 'INFO', 'running': 'PLAY', 'cancelling': 'PAUSE', 'cancelled': 'CANCEL',
               'failed': 'ERROR', 'done': 'CHECKMARK'}


def format_duration(seconds):
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _number(x):
    return f"{round(float(x), 4) + 0.0:.4g}"  # + 0.0: no "-0"


def _wrapped_labels(layout, text, icon='NONE', width=48, max_lines=14):
    # Labels do not wrap: long engine messages (a log tail) are split by hand.
    lines = []
    for paragraph in text.splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width) or [""]
    col = layout.column(align=True)
    for i, line in enumerate(lines[-max_lines:]):
        col.label(text=line, icon=icon if i == 0 else 'BLANK1')


def _export_status(layout, state):
    # Like the job's status: what runs, a bar, the camera rendered last, a message.
    col = layout.column(align=True)
    col.label(text=f"Export: {state.state.capitalize()}", icon=EXPORT_ICONS.get(state.state, 'INFO'))
    if state.state == 'running':
        col.progress(factor=state.progress, type='BAR', text=f"{state.done} / {state.total} images")
        if state.camera:
            col.label(text=f"Rendered: {state.camera}")
        col.operator("marble.cancel_export", icon='CANCEL')
    elif state.message:
        _wrapped_labels(col, state.message, icon='ERROR' if state.state == 'failed' else 'INFO')


class MARBLE_PT_main(bpy.types.Panel):
    bl_label = "Marble"
    bl_idname = "MARBLE_PT_main"
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "Marble"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.marble
        job = context.window_manager.marble_job
        running = jobs.is_running()

        box = layout.box()
        box.label(text="Rig", icon='OUTLINER_OB_CAMERA')
        collection = settings.rig_collection
        if collection is not None:
            cameras, frames = builders.rig_summary(collection)
            counts = f"{cameras} cameras" + (f", {frames} frames" if frames > 1 else "")
            box.label(text=f"{collection.name}: {counts}")
        elif settings.rig_path:
            box.label(text=bpy.path.basename(settings.rig_path))
        else:
            box.label(text="No rig imported")
        row = box.row(align=True)
        row.operator("marble.import_rig", icon='IMPORT')
        row.operator("marble.export_rig", icon='EXPORT')
        region = regions.scene_region(context.scene)
        if region is not None:
            col = box.column(align=True)
            col.prop(settings, "region")
            if regions.is_explicit(region):
                centre, radius = regions.sphere(region)
                where = ", ".join(_number(x) for x in centre)
                col.label(text=f"Region: radius {_number(radius)} at ({where})", icon='SPHERE')
            else:
                col.label(text="Region: automatic (the engine estimates it)", icon='SPHERE')
        export_state = context.window_manager.marble_export
        if export_state.state != 'idle':
            _export_status(box, export_state)

        box = layout.box()
        box.label(text="Training", icon='MOD_REMESH')
        col = box.column()
        col.enabled = not running
        col.prop(settings, "preset")
        col.prop(settings, "iterations")
        col.prop(settings, "resolution")
        col.prop(settings, "device")
        col.prop(settings, "job_dir")
        row = box.row()
        row.enabled = not running
        row.scale_y = 1.4
        row.operator("marble.train", icon='PLAY')

        if job.state != 'idle':
            box = layout.box()
            box.label(text=f"{job.state.capitalize()}" + (f": {job.stage}" if job.stage else ""),
                      icon=STATE_ICONS.get(job.state, 'INFO'))
            percent = f"{100.0 * job.progress:.0f}%"
            box.progress(factor=job.progress, type='BAR', text=percent)
            col = box.column(align=True)
            total = f" / {job.total}" if job.total else ""
            col.label(text=f"Iteration: {job.iteration}{total}")
            col.label(text=f"Loss: {job.loss:.4f}")
            col.label(text=f"PSNR: {job.psnr:.2f} dB")
            if job.state in ACTIVE_STATES:
                col.label(text=f"ETA: {format_duration(job.eta_s)}")
            if job.device:
                col.label(text=f"Device: {job.device}")
            if job.message:
                _wrapped_labels(box, job.message, icon='ERROR' if job.state == 'failed' else 'INFO')
            if running:
                box.operator("marble.cancel", icon='CANCEL')

        box = layout.box()
        box.label(text="Result", icon='MESH_DATA')
        box.operator("marble.import_mesh", icon='IMPORT')


CLASSES = (MARBLE_PT_main,)
