# SPDX-License-Identifier: GPL-3.0-or-later
"""Import a mesh written by the engine (PLY with vertex colours)."""
import os

import bpy

from ..addon.build import mesh as meshes
from .files import ResultImport, meshes_folder, rig_collection


class MARBLE_OT_import_mesh(bpy.types.Operator, ResultImport):
    """Import a reconstructed mesh (PLY) into the rig's collection; it lines up with the rig's cameras"""
    bl_idname = "marble.import_mesh"
    bl_label = "Import Mesh"
    filename_ext = ".ply"
    filter_glob: bpy.props.StringProperty(default="*.ply", options={'HIDDEN'})
    missing = "No such mesh file"

    def start_file(self, context):
        # The last job's meshes folder when there is one.
        folder = meshes_folder(context.window_manager.marble_job.job_dir)
        return os.path.join(folder, "") if folder else ""

    def load(self, context, path):
        obj = meshes.build_mesh(path, rig_collection(context, context.collection or context.scene.collection))
        return f"Imported '{obj.name}': {len(obj.data.vertices)} vertices, {len(obj.data.polygons)} faces"


CLASSES = (MARBLE_OT_import_mesh,)
