# SPDX-License-Identifier: GPL-3.0-or-later
"""What the result importers share: the file browser opens in the job's meshes folder, the objects go
to the rig's collection, and errors and results are reported the same way."""
import os

import bpy
from bpy_extras.io_utils import ImportHelper

from ..addon.build import mesh as meshes
from ..engine.io import protocol


def meshes_folder(job_dir):
    """The job's meshes folder when it exists, else ""."""
    folder = os.path.join(job_dir, protocol.MESHES_DIR) if job_dir else ""
    return folder if folder and os.path.isdir(folder) else ""


def rig_collection(context, fallback):
    """The scene's rig collection while it is in the scene, else `fallback`."""
    collection = context.scene.marble.rig_collection
    if collection is None or collection not in context.scene.collection.children_recursive:
        return fallback
    return collection


class ResultImport(ImportHelper):
    """An operator importing one of a job's results. Subclasses define `load(context, path)`, which
    imports the file and returns the report, and may give `start_file` and `exists`."""
    bl_options = {'REGISTER', 'UNDO'}
    missing = "No such file"             # the error for a path that is not there
    errors = (meshes.MeshError,)         # reported to the user instead of raised

    def start_file(self, context):
        """Where the file browser starts ("" : where it likes)."""
        return ""

    def exists(self, path):
        return os.path.isfile(path)

    def invoke(self, context, event):
        start = self.start_file(context)
        if start and not self.filepath:
            self.filepath = start
        return ImportHelper.invoke(self, context, event)

    def execute(self, context):
        path = os.path.abspath(bpy.path.abspath(self.filepath)) if self.filepath else ""
        if not path or not self.exists(path):
            self.report({'ERROR'}, f"{self.missing}: {path or '(none given)'}")
            return {'CANCELLED'}
        try:
            message = self.load(context, path)
        except self.errors as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        meshes.show_color_attributes(context.window_manager)
        self.report({'INFO'}, message)
        return {'FINISHED'}
