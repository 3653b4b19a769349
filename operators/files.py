# SPDX-License-Identifier: GPL-3.0-or-later
"""What the result importers share: the file browser opens in the job's meshes folder, a path given
beforehand (a file dropped on the viewport, a script) imports at once, the objects go to the rig's
collection, and errors and results are reported the same way."""
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


def invoke_import(operator, context, event):
    """Invoke of Marble's importers: with a path already set (a file dropped on the 3D viewport or the
    outliner through a FileHandler, or a script) import it at once; else open the file browser."""
    if operator.filepath:
        return operator.execute(context)
    return ImportHelper.invoke(operator, context, event)


def chosen_paths(operator):
    """The files an importer was given: each of `files` in `directory` (several files chosen or dropped)
    when the operator has them, else its `filepath`; absolute."""
    directory = getattr(operator, "directory", "")
    names = [f.name for f in getattr(operator, "files", ()) if f.name]
    if directory and names:
        folder = bpy.path.abspath(directory)
        return [os.path.abspath(os.path.join(folder, name)) for name in names]
    return [os.path.abspath(bpy.path.abspath(operator.filepath))] if operator.filepath else []


class ResultImport(ImportHelper):
    """An operator importing one of a job's results. Subclasses define `load(context, path)`, which
    imports the file and returns the report, and may give `start_file` and `exists`. Several files
    (`files` in `directory`, when the subclass has them) import one after the other in one undo step."""
    bl_options = {'REGISTER', 'UNDO'}
    missing = "No such file"             # the error for a path that is not there
    errors = (meshes.MeshError,)         # reported to the user instead of raised

    def start_file(self, context):
        """Where the file browser starts ("" : where it likes)."""
        return ""

    def exists(self, path):
        return os.path.isfile(path)

    def invoke(self, context, event):
        if self.filepath:  # dropped, or given by a script: no file browser
            return self.execute(context)
        self.filepath = self.start_file(context)
        return ImportHelper.invoke(self, context, event)

    def execute(self, context):
        paths = chosen_paths(self)
        if not paths:
            self.report({'ERROR'}, f"{self.missing}: (none given)")
            return {'CANCELLED'}
        imported = 0
        for path in paths:  # several files: those before a bad one stay imported
            try:
                if not self.exists(path):
                    raise FileNotFoundError(f"{self.missing}: {path}")
                message = self.load(context, path)
            except (FileNotFoundError, *self.errors) as exc:
                self.report({'ERROR'}, str(exc))
                break
            imported += 1
            self.report({'INFO'}, message)
        if imported:
            meshes.show_color_attributes(context.window_manager)
        return {'FINISHED'} if imported else {'CANCELLED'}
