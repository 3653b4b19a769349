# SPDX-License-Identifier: GPL-3.0-or-later
"""Import a mesh written by the engine (PLY with vertex colours)."""
import os

import bpy
from bpy_extras.io_utils import ImportHelper

from ..addon import scene as builders


class MARBLE_OT_import_mesh(bpy.types.Operator, ImportHelper):
    """Import a reconstructed mesh (PLY) into the rig's collection; it lines up with the rig's cameras"""
    bl_idname = "marble.import_mesh"
    bl_label = "Import Mesh"
    bl_options = {'REGISTER', 'UNDO'}

    filename_ext = ".ply"
    filter_glob: bpy.props.StringProperty(default="*.ply", options={'HIDDEN'})

    def invoke(self, context, event):
        # Start the browser in the last job's meshes folder when there is one.
        job_dir = context.window_manager.marble_job.job_dir
        meshes = os.path.join(job_dir, "meshes") if job_dir else ""
        if meshes and os.path.isdir(meshes) and not self.filepath:
            self.filepath = os.path.join(meshes, "")
        return ImportHelper.invoke(self, context, event)

    def execute(self, context):
        path = os.path.abspath(bpy.path.abspath(self.filepath)) if self.filepath else ""
        if not path or not os.path.isfile(path):
            self.report({'ERROR'}, f"No such mesh file: {path or '(none given)'}")
            return {'CANCELLED'}
        collection = context.scene.marble.rig_collection
        if collection is None or collection not in context.scene.collection.children_recursive:
            collection = context.collection or context.scene.collection
        try:
            obj = builders.build_mesh(path, collection)
        except builders.MeshError as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        builders.show_color_attributes(context.window_manager)
        self.report({'INFO'}, f"Imported '{obj.name}': {len(obj.data.vertices)} vertices, "
                              f"{len(obj.data.polygons)} faces")
        return {'FINISHED'}


CLASSES = (MARBLE_OT_import_mesh,)
