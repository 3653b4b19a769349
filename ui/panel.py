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


class MarblePanel:
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "Marble"


class MarbleSubPanel(MarblePanel):
    """A sub-panel of MARBLE_PT_main with an icon in its header."""
    bl_parent_id = "MARBLE_PT_main"
    header_icon = 'NONE'

    def draw_header(self, context):
        self.layout.label(icon=self.header_icon)


class MARBLE_PT_main(MarblePanel, bpy.types.Panel):
    """The parent panel: a one-line status; the work is in the sub-panels."""
    bl_label = "Marble"
    bl_idname = "MARBLE_PT_main"

    def draw(self, context):
        job = context.window_manager.marble_job
        if job.state == 'idle':
            self.layout.label(text="Import a rig, then Train")
        else:
            self.layout.label(text=f"Job: {job.state.capitalize()}", icon=STATE_ICONS.get(job.state, 'INFO'))


class MARBLE_PT_rig(MarbleSubPanel, bpy.types.Panel):
    bl_label = "Rig"
    bl_idname = "MARBLE_PT_rig"
    header_icon = 'OUTLINER_OB_CAMERA'

    def draw(self, context):
        layout = self.layout
        settings = context.scene.marble
        collection = settings.rig_collection
        if collection is not None:
            cameras, frames = builders.rig_summary(collection)
            layout.label(text=f"{collection.name}: {cameras} cameras, {frames} frame{'s' if frames != 1 else ''}")
        elif settings.rig_path:
            layout.label(text=bpy.path.basename(settings.rig_path))
        else:
            layout.label(text="No rig imported")
        row = layout.row(align=True)
        row.operator("marble.import_rig", icon='IMPORT')
        row.operator("marble.export_rig", icon='EXPORT')
        export_state = context.window_manager.marble_export
        if export_state.state != 'idle':
            _export_status(layout, export_state)


class MARBLE_PT_train(MarbleSubPanel, bpy.types.Panel):
    bl_label = "Train"
    bl_idname = "MARBLE_PT_train"
    header_icon = 'MOD_REMESH'

    def draw(self, context):
        layout = self.layout
        settings = context.scene.marble
        running = jobs.is_running()
        col = layout.column()
        col.enabled = not running
        col.prop(settings, "preset")
        col.prop(settings, "iterations")
        col.prop(settings, "resolution")
        col.prop(settings, "device")
        col.prop(settings, "use_masks")
        col.prop(settings, "job_dir")
        region = regions.scene_region(context.scene)
        if region is not None:
            col.prop(settings, "region")
            if regions.is_explicit(region):
                centre, radius = regions.sphere(region)
                where = ", ".join(_number(x) for x in centre)
                col.label(text=f"Region: radius {_number(radius)} at ({where})", icon='SPHERE')
            else:
                col.label(text="Region: automatic (move or scale the empty to choose)", icon='SPHERE')
        row = layout.row()
        row.enabled = not running
        row.scale_y = 1.4
        row.operator("marble.train", icon='PLAY')


class MARBLE_PT_job(MarbleSubPanel, bpy.types.Panel):
    bl_label = "Job"
    bl_idname = "MARBLE_PT_job"

    @classmethod
    def poll(cls, context):
        return context.window_manager.marble_job.state != 'idle'

    def draw_header(self, context):
        self.layout.label(icon=STATE_ICONS.get(context.window_manager.marble_job.state, 'INFO'))

    def draw(self, context):
        layout = self.layout
        job = context.window_manager.marble_job
        layout.label(text=job.state.capitalize() + (f": {job.stage}" if job.stage else ""))
        text = f"{100.0 * job.progress:.0f}%"
        if job.state in ACTIVE_STATES and job.eta_s > 0:
            text += f", {format_duration(job.eta_s)} left"
        layout.progress(factor=job.progress, type='BAR', text=text)
        col = layout.column(align=True)
        total = f" / {job.total}" if job.total else ""
        col.label(text=f"Iteration: {job.iteration}{total}")
        if job.frame >= 0:
            col.label(text=f"Frame: {job.frame}")
        col.label(text=f"Loss: {job.loss:.4f}")
        col.label(text=f"PSNR: {job.psnr:.2f} dB")
        if job.device:
            col.label(text=f"Device: {job.device}")
        if job.message:
            _wrapped_labels(layout, job.message, icon='ERROR' if job.state == 'failed' else 'INFO')
        row = layout.row(align=True)
        if jobs.is_running():
            row.operator("marble.cancel", icon='CANCEL')
        elif job.resumable:
            row.operator("marble.resume", icon='PLAY')


class MARBLE_PT_results(MarbleSubPanel, bpy.types.Panel):
    bl_label = "Results"
    bl_idname = "MARBLE_PT_results"
    header_icon = 'MESH_DATA'

    def draw(self, context):
        layout = self.layout
        col = layout.column(align=True)
        col.operator("marble.import_mesh", icon='IMPORT')
        if hasattr(bpy.types, "MARBLE_OT_import_sequence"):
            col.operator("marble.import_sequence", icon='SEQUENCE')
        row = layout.row(align=True)
        row.operator("marble.show_curves", icon='GRAPH')
        row.operator("marble.open_job_folder", icon='FILE_FOLDER')


CLASSES = (MARBLE_PT_main, MARBLE_PT_rig, MARBLE_PT_train, MARBLE_PT_job, MARBLE_PT_results)
