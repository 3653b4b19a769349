# SPDX-License-Identifier: GPL-3.0-or-later
"""View3D > Sidebar > Marble: rig, training settings, live progress, results."""
import textwrap

import bpy

from ..addon import jobs
from ..addon.build import region as regions
from ..addon.build import rig as rig_build
from ..addon.jobs import command as commands
from ..addon.jobs import reducer

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


def frame_text(job):
    """"Frame F (k+1 of N)" for a dynamic job's frame in training; "" for a static job."""
    if not job.dynamic or job.frame < 0:
        return ""
    position = reducer.frame_position(job)
    return f"Frame {job.frame}" + (f" ({position})" if position else "")


def phase_text(job):
    """What the dynamic job does within its frame, for the panel; "" when unknown or static."""
    return reducer.PHASES.get(job.phase, "").capitalize() if job.dynamic else ""


def export_text(job):
    """"Exporting: bake" while an export runs (the phase, once the engine names it)."""
    return "Exporting" + (f": {job.phase}" if job.phase in reducer.EXPORT_STEPS else "")


def stage_text(job):
    """The stage shown beside the job's state: a dynamic job's phase while it predicts or trains a frame
    (the engine announces "predict" and then "train" per frame); a calibration's phase (also a training
    job's from photographs, which calibrates first)."""
    if job.kind == 'calibrate' or job.stage == "calibrate":
        return "Calibrating" + (f": {job.phase}" if job.phase else "")
    if job.dynamic and job.phase and job.stage in ("frame", "predict", "train"):
        return job.phase
    return job.stage


def _wrapped_labels(layout, text, icon='NONE', width=48, max_lines=14):
    # Labels do not wrap: long engine messages (a log tail) are split by hand. The job state keeps at
    # most about reducer.MAX_MESSAGE_CHARS of a message; anything longer is cut here too, never wrapped whole.
    limit = reducer.MAX_MESSAGE_CHARS + reducer.NOTE_CHARS
    text = text if len(text) <= limit else text[:limit] + "…"
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


def _job_end(layout, job):
    """The Job panel's end: a calibration's or an export's count in its phase, the message, Cancel or Resume."""
    calibrating = job.kind == 'calibrate' or job.stage == "calibrate"
    counted = reducer.CALIBRATE_COUNTS.get(job.phase) if calibrating else None
    if job.kind == 'export' and job.phase in reducer.EXPORT_STEPS:
        counted = reducer.EXPORT_STEPS[job.phase].capitalize()
    if counted and job.total and job.state in ACTIVE_STATES:
        layout.label(text=f"{counted}: {job.iteration} / {job.total}")
    if job.message:
        _wrapped_labels(layout, job.message, icon='ERROR' if job.state == 'failed' else 'INFO')
    row = layout.row(align=True)
    if jobs.is_running():
        row.operator("marble.cancel", icon='CANCEL')
    elif job.resumable:
        row.operator("marble.resume", icon='PLAY')


def _export_results(layout, context):
    """A finished static job: its textured mesh (Faces, Texture Size, Export); a dynamic one: its frames as
    one streaming USD sequence. Only when the shown job has that result, and no job runs."""
    kind = commands.exportable(commands.shown_job_dir(context))
    if not kind:
        return
    box = layout.box()
    col = box.column(align=True)
    col.enabled = not jobs.is_running()  # one job at a time
    if kind == "glb":
        settings = context.scene.marble
        col.label(text="Textured Mesh", icon='TEXTURE')
        col.prop(settings, "export_faces")
        col.prop(settings, "export_texture")
        col.operator("marble.export_textured", icon='EXPORT')
    else:
        col.label(text="Streaming Sequence (USD)", icon='SEQUENCE')
        col.operator("marble.export_sequence_usd", text="Export USD Sequence", icon='EXPORT')


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
            self.layout.label(text="Import a rig or photos, then Train")
        else:
            self.layout.label(text=f"Job: {job.state.capitalize()}", icon=STATE_ICONS.get(job.state, 'INFO'))


class MARBLE_PT_rig(MarbleSubPanel, bpy.types.Panel):
    bl_label = "Rig"
    header_icon = 'OUTLINER_OB_CAMERA'

    def draw(self, context):
        layout, settings = self.layout, context.scene.marble
        collection = settings.rig_collection
        if collection is not None:
            cameras, frames = rig_build.rig_summary(collection)
            layout.label(text=f"{collection.name}: {cameras} cameras, {frames} frame{'s' if frames != 1 else ''}")
        elif settings.rig_path:
            layout.label(text=bpy.path.basename(settings.rig_path))
        else:
            layout.label(text="No rig imported")
        row = layout.row(align=True)
        row.operator("marble.import_rig", icon='IMPORT')
        photos = row.row(align=True)
        photos.enabled = not jobs.is_running()  # one job at a time
        photos.operator("marble.import_photos", text="Import Photos", icon='IMAGE_DATA')
        layout.operator("marble.export_rig", icon='EXPORT')
        export_state = context.window_manager.marble_export
        if export_state.state != 'idle':
            _export_status(layout, export_state)


class MARBLE_PT_train(MarbleSubPanel, bpy.types.Panel):
    bl_label = "Train"
    header_icon = 'MOD_REMESH'

    def draw(self, context):
        layout, settings = self.layout, context.scene.marble
        running = jobs.is_running()
        col = layout.column()
        col.enabled = not running
        col.prop(settings, "preset")
        col.prop(settings, "iterations")
        col.prop(settings, "resolution")
        col.prop(settings, "device")
        gpus = col.row()
        gpus.enabled = commands.rig_is_dynamic(settings)  # torchrun spreads a dynamic rig's frames
        gpus.prop(settings, "gpus")
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

    @classmethod
    def poll(cls, context):
        return context.window_manager.marble_job.state != 'idle'

    def draw_header(self, context):
        self.layout.label(icon=STATE_ICONS.get(context.window_manager.marble_job.state, 'INFO'))

    def draw(self, context):
        layout = self.layout
        job = context.window_manager.marble_job
        calibration = job.kind == 'calibrate' or job.stage == "calibrate"
        exporting = job.kind == 'export'
        stage = stage_text(job)
        if exporting and job.state == 'running':
            layout.label(text=export_text(job))  # "Exporting: bake"
        elif exporting:
            layout.label(text=f"{job.state.capitalize()}: export")
        elif calibration and job.state == 'running':
            layout.label(text=stage)  # "Calibrating: matching"
        elif job.kind == 'calibrate':
            layout.label(text=f"{job.state.capitalize()}: calibration")
        else:
            layout.label(text=job.state.capitalize() + (f": {stage}" if stage else ""))
        text = f"{100.0 * job.progress:.0f}%"
        if job.state in ACTIVE_STATES and job.eta_s > 0:
            text += f", {format_duration(job.eta_s)} left"
        layout.progress(factor=job.progress, type='BAR', text=text)
        if calibration or exporting:
            _job_end(layout, job)
            return
        col = layout.column(align=True)
        if job.dynamic:
            frame = frame_text(job)
            phase = phase_text(job) if job.state in ACTIVE_STATES else ""
            if frame:
                col.label(text=frame + (f": {phase.lower()}" if phase else ""), icon='SEQUENCE')
            if job.frame_count:
                col.label(text=f"Frames done: {job.frames_done} of {job.frame_count}")
        total = f" / {job.total}" if job.total else ""
        col.label(text=f"{'Step in frame' if job.dynamic else 'Iteration'}: {job.iteration}{total}")
        if job.frame >= 0 and not job.dynamic:
            col.label(text=f"Frame: {job.frame}")
        col.label(text=f"Loss: {job.loss:.4f}")
        col.label(text=f"PSNR: {job.psnr:.2f} dB")
        if job.device:
            col.label(text=f"Device: {job.device}")
        _job_end(layout, job)


class MARBLE_PT_results(MarbleSubPanel, bpy.types.Panel):
    bl_label = "Results"
    header_icon = 'MESH_DATA'

    def draw(self, context):
        layout = self.layout
        col = layout.column(align=True)
        col.operator("marble.import_mesh", icon='IMPORT')
        if hasattr(bpy.types, "MARBLE_OT_import_sequence"):
            # The file browser opens on the job's sequence.json (the operator's start_file).
            col.operator("marble.import_sequence", icon='SEQUENCE')
        _export_results(layout, context)
        row = layout.row(align=True)
        row.operator("marble.show_curves", icon='GRAPH')
        row.operator("marble.open_job_folder", icon='FILE_FOLDER')


CLASSES = (MARBLE_PT_main, MARBLE_PT_rig, MARBLE_PT_train, MARBLE_PT_job, MARBLE_PT_results)
