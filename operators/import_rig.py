# SPDX-License-Identifier: GPL-3.0-or-later
"""Import a camera rig (transforms.json) as one Blender camera per view."""
import os

import bpy
from bpy_extras.io_utils import ImportHelper

from ..addon import scene as builders
from ..engine import rig as rigs


class MARBLE_OT_import_rig(bpy.types.Operator, ImportHelper):
    """Import calibrated cameras from a transforms.json rig, one camera per photograph"""
    bl_idname = "marble.import_rig"
    bl_label = "Import Rig"
    bl_options = {'REGISTER', 'UNDO'}

    filename_ext = ".json"
    filter_glob: bpy.props.StringProperty(default="*.json", options={'HIDDEN'})

    def execute(self, context):
        path = os.path.abspath(bpy.path.abspath(self.filepath)) if self.filepath else ""
        if not path:
            self.report({'ERROR'}, "No rig file given")
            return {'CANCELLED'}
        # Parse and check everything before creating any Blender data.
        try:
            rig = rigs.load_rig(path)
            collection, warnings = builders.build_rig(rig, context.scene)
        except (rigs.RigError, ValueError) as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        settings = context.scene.marble
        settings.rig_path = rig.path
        settings.rig_collection = collection
        for warning in warnings:
            self.report({'WARNING'}, warning)
        self.report({'INFO'}, f"Imported {len(rig.views)} cameras into '{collection.name}'")
        return {'FINISHED'}


CLASSES = (MARBLE_OT_import_rig,)
