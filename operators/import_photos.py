# SPDX-License-Identifier: GPL-3.0-or-later
"""File > Import > Photos (Marble): calibrate a folder of photographs, or a video, as a background job
(`python -m engine calibrate`, see addon.jobs); at its end the cameras, the region and the sparse points
arrive in one collection, which becomes the scene's rig."""
import os

import bpy
from bpy_extras.io_utils import ImportHelper

from ..addon import jobs
from ..addon.jobs import command as commands

FILTER = ";".join("*" + extension for extension in commands.PHOTO_EXTENSIONS + commands.VIDEO_EXTENSIONS)


def start_calibration(context, path):
    """Start calibrating the photographs in the folder `path` (a photograph in it counts as the folder)
    or the video file `path`; returns the job. Raises jobs.JobError with a message for the user."""
    return jobs.start_calibration(context, path)


class MARBLE_OT_import_photos(bpy.types.Operator, ImportHelper):
    """Calibrate cameras from a folder of photographs or a video (runs in the background), then import
    them with the sparse points as the scene's rig. Pick a video, or open a folder of photographs and
    import it with nothing selected"""
    bl_idname = "marble.import_photos"
    bl_label = "Photos (Marble)"

    filename_ext = ""
    filter_glob: bpy.props.StringProperty(default=FILTER, options={'HIDDEN'})
    directory: bpy.props.StringProperty(
        name="Folder", subtype='DIR_PATH', options={'HIDDEN', 'SKIP_SAVE'},
        description="The folder the file browser is in: its photographs are calibrated when no video is chosen")

    def _path(self):
        path = bpy.path.abspath(self.filepath) if self.filepath else ""
        if self.directory and (not path or path.endswith(("/", os.sep))):
            path = bpy.path.abspath(self.directory)  # nothing chosen in the folder: the folder's photographs
        return os.path.abspath(path) if path else ""

    def execute(self, context):
        try:
            job = start_calibration(context, self._path())
        except jobs.JobError as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        self.report({'INFO'}, f"Calibrating '{job.source_name}' in {job.job_dir}")
        return {'FINISHED'}


def menu_import(self, context):
    """File > Import > Photos (Marble)."""
    self.layout.operator(MARBLE_OT_import_photos.bl_idname, text=MARBLE_OT_import_photos.bl_label)


CLASSES = (MARBLE_OT_import_photos,)
MENUS = (("TOPBAR_MT_file_import", menu_import),)
