# SPDX-License-Identifier: GPL-3.0-or-later
"""Start and cancel training: the engine runs as a separate process (see addon.jobs)."""
import bpy

from ..addon import jobs
from ..addon.jobs import command as commands


def start(operator, context, resume, started):
    """Start (or resume) the scene's job; `started`: the report, before the job's folder."""
    try:
        job = jobs.start(context, resume=resume)
    except jobs.JobError as exc:
        operator.report({'ERROR'}, str(exc))
        return {'CANCELLED'}
    operator.report({'INFO'}, f"{started} {job.job_dir}")
    return {'FINISHED'}


class MARBLE_OT_train(bpy.types.Operator):
    """Reconstruct a mesh from the imported rig's photographs (runs in the background)"""
    bl_idname = "marble.train"
    bl_label = "Train"

    def execute(self, context):
        return start(self, context, False, "Training started in")


class MARBLE_OT_resume(bpy.types.Operator):
    """Go on training the scene's stopped job from its last checkpoint (runs in the background)"""
    bl_idname = "marble.resume"
    bl_label = "Resume"

    @classmethod
    def poll(cls, context):
        return not jobs.is_running() and commands.resumable_job(context.scene) is not None

    def execute(self, context):
        return start(self, context, True, "Resuming the job in")


class MARBLE_OT_cancel(bpy.types.Operator):
    """Stop the running job (training saves a checkpoint first; a calibration or an export leaves nothing)"""
    bl_idname = "marble.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        if not jobs.cancel():
            self.report({'WARNING'}, "No Marble job is running")
            return {'CANCELLED'}
        self.report({'INFO'}, "Cancelling the Marble job")
        return {'FINISHED'}


CLASSES = (MARBLE_OT_train, MARBLE_OT_resume, MARBLE_OT_cancel)
