# SPDX-License-Identifier: GPL-3.0-or-later
"""Blender's habits for Marble's importers: File > Import entries and drag and drop onto the 3D viewport
or the outliner (FileHandlers, Blender 4.1+), both running the same operators as the sidebar.

Dropped files: transforms.json and other rig .json files, cameras_sphere.npz -> Import Rig (a
sequence.json goes on from there to Import Sequence: a drop cannot tell .json files apart by name);
.glb and .ply -> Import Mesh; .usdc -> Import Sequence. The operators import a file given beforehand at
once (files.invoke_import), in one undo step each."""
import bpy

# (label in File > Import, operator, icon)
IMPORT_ENTRIES = (("Camera Rig (Marble)", "marble.import_rig", 'OUTLINER_OB_CAMERA'),
                  ("Mesh (Marble) (.ply/.glb)", "marble.import_mesh", 'MESH_DATA'),
                  ("Mesh Sequence (Marble) (sequence.json/.usdc)", "marble.import_sequence", 'SEQUENCE'))


def menu_import(self, context):
    """File > Import: Marble's rig, mesh and sequence (Photos (Marble) is import_photos' own entry)."""
    layout = self.layout
    layout.separator()
    for text, idname, icon in IMPORT_ENTRIES:
        category, name = idname.split(".")
        if hasattr(getattr(bpy.ops, category), name):
            layout.operator(idname, text=text, icon=icon)


def poll_drop_target(context):
    """Drops land in the 3D viewport and in the outliner's view layer (as Blender's own importers')."""
    area = context.area
    if area is None:
        return False
    if area.type == 'VIEW_3D':
        return True
    return area.type == 'OUTLINER' and getattr(area.spaces.active, "display_mode", "") == 'VIEW_LAYER'


class MarbleDrop:
    @classmethod
    def poll_drop(cls, context):
        return poll_drop_target(context)


class MARBLE_FH_rig(MarbleDrop, bpy.types.FileHandler):
    bl_idname = "MARBLE_FH_rig"
    bl_label = "Marble Camera Rig"
    bl_import_operator = "marble.import_rig"
    bl_file_extensions = ".json;.npz"


class MARBLE_FH_mesh(MarbleDrop, bpy.types.FileHandler):
    bl_idname = "MARBLE_FH_mesh"
    bl_label = "Marble Mesh"
    bl_import_operator = "marble.import_mesh"
    bl_file_extensions = ".glb;.ply"


class MARBLE_FH_sequence(MarbleDrop, bpy.types.FileHandler):
    bl_idname = "MARBLE_FH_sequence"
    bl_label = "Marble Mesh Sequence (USD)"
    bl_import_operator = "marble.import_sequence"
    bl_file_extensions = ".usdc"


CLASSES = (MARBLE_FH_rig, MARBLE_FH_mesh, MARBLE_FH_sequence)
MENUS = (("TOPBAR_MT_file_import", menu_import),)
