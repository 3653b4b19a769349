# SPDX-License-Identifier: GPL-3.0-or-later
"""The job's other results: its folder, and the loss and PSNR curves the engine draws."""
import os

import bpy

from ..addon.jobs import command as commands
from ..engine.io import protocol


class MARBLE_OT_open_job_folder(bpy.types.Operator):
    """Open the job's folder (meshes, checkpoints, log, curves) in the file browser of the system"""
    bl_idname = "marble.open_job_folder"
    bl_label = "Open Job Folder"

    def execute(self, context):
        job_dir = commands.shown_job_dir(context)
        if not job_dir or not os.path.isdir(job_dir):
            self.report({'ERROR'}, f"No job folder to open{': ' + job_dir if job_dir else ''}")
            return {'CANCELLED'}
        bpy.ops.wm.path_open(filepath=job_dir)
        return {'FINISHED'}


def show_image(context, image):
    """Show `image` in an Image Editor: one already open, else a new window turned into one.
    Without a window (Blender as a module) the image is only loaded."""
    screen = getattr(context, "screen", None)
    areas = [a for a in screen.areas if a.type == 'IMAGE_EDITOR'] if screen is not None else []
    if not areas and getattr(context, "window", None) is not None and bpy.ops.wm.window_new.poll():
        before = set(context.window_manager.windows[:])
        bpy.ops.wm.window_new()
        new = [w for w in context.window_manager.windows if w not in before]
        if new:
            area = new[0].screen.areas[0]
            area.type = 'IMAGE_EDITOR'
            areas = [area]
    for area in areas[:1]:
        area.spaces.active.image = image
        area.tag_redraw()
    return bool(areas)


class MARBLE_OT_show_curves(bpy.types.Operator):
    """Show the job's loss and PSNR curves (the engine's curves.png) in an Image Editor"""
    bl_idname = "marble.show_curves"
    bl_label = "Show Curves"

    def execute(self, context):
        job_dir = commands.shown_job_dir(context)
        path = os.path.join(job_dir, protocol.CURVES_FILE) if job_dir else ""
        if not path or not os.path.isfile(path):
            self.report({'ERROR'}, f"No curves yet{': ' + path if path else ''} (the engine draws them at "
                                   "each checkpoint and when training ends)")
            return {'CANCELLED'}
        image = bpy.data.images.load(path, check_existing=True)
        image.reload()  # the engine redraws the file as training goes on
        shown = show_image(context, image)
        self.report({'INFO'}, f"Curves: image '{image.name}'" + ("" if shown else " (loaded; open an Image Editor)"))
        return {'FINISHED'}


CLASSES = (MARBLE_OT_open_job_folder, MARBLE_OT_show_curves)
