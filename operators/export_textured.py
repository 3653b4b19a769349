# SPDX-License-Identifier: GPL-3.0-or-later
"""Export a finished job's result through the engine (`python -m engine export`, a background job like
training, see addon.jobs): a static job's textured mesh (glTF binary, decimated to the scene's Faces,
colours baked into a Texture Size image), imported as "<rig> textured" in place of an earlier one; a
dynamic job's frames as one streaming USD sequence, imported as a sequence cache."""
import bpy

from ..addon import jobs


def start_export(operator, context, fmt, what):
    try:
        job = jobs.start_export(context, fmt)
    except jobs.JobError as exc:
        operator.report({'ERROR'}, str(exc))
        return {'CANCELLED'}
    operator.report({'INFO'}, f"Exporting the {what} of {job.job_dir}")
    return {'FINISHED'}


class MARBLE_OT_export_textured(bpy.types.Operator):
    """Bake the finished job's mesh into a textured mesh (decimated to Faces, colours in a Texture Size
    image, glTF binary in its meshes folder) and import it into the rig's collection (runs in the
    background)"""
    bl_idname = "marble.export_textured"
    bl_label = "Export Textured Mesh"

    @classmethod
    def poll(cls, context):
        return not jobs.is_running()

    def execute(self, context):
        return start_export(self, context, "glb", "textured mesh")


class MARBLE_OT_export_sequence_usd(bpy.types.Operator):
    """Write the finished dynamic job's frames as one streaming USD sequence (meshes/sequence.usdc) and
    import it as a sequence cache (runs in the background)"""
    bl_idname = "marble.export_sequence_usd"
    bl_label = "Streaming Sequence (USD)"

    @classmethod
    def poll(cls, context):
        return not jobs.is_running()

    def execute(self, context):
        return start_export(self, context, "usd", "USD sequence")


CLASSES = (MARBLE_OT_export_textured, MARBLE_OT_export_sequence_usd)
