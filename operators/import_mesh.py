# SPDX-License-Identifier: GPL-3.0-or-later
"""Import a mesh written by the engine: a PLY with vertex colours, or a textured mesh (glTF binary, .glb,
through Blender's own glTF importer: build.textured)."""
import os

import bpy

from ..addon.build import mesh as meshes
from ..addon.build import textured as textured_build
from .files import ResultImport, meshes_folder, rig_collection

FILTER = "*.ply;*.glb"
EXTENSIONS = (".ply", ".glb")


class MARBLE_OT_import_mesh(bpy.types.Operator, ResultImport):
    """Import a reconstructed mesh (PLY with vertex colours, or a textured .glb Marble wrote) into the rig's
    collection; it lines up with the rig's cameras"""
    bl_idname = "marble.import_mesh"
    bl_label = "Import Mesh"
    filename_ext = ""
    filter_glob: bpy.props.StringProperty(default=FILTER, options={'HIDDEN'})
    directory: bpy.props.StringProperty(subtype='DIR_PATH', options={'HIDDEN', 'SKIP_SAVE'})
    files: bpy.props.CollectionProperty(type=bpy.types.OperatorFileListElement, options={'HIDDEN', 'SKIP_SAVE'})
    missing = "No such mesh file"
    errors = (meshes.MeshError, textured_build.TexturedError)

    def start_file(self, context):
        # The last job's meshes folder when there is one.
        folder = meshes_folder(context.window_manager.marble_job.job_dir)
        return os.path.join(folder, "") if folder else ""

    def load(self, context, path):
        extension = os.path.splitext(path)[1].lower()
        collection = rig_collection(context, context.collection or context.scene.collection)
        if extension == ".glb":
            rig = context.scene.marble.rig_collection
            stem = os.path.splitext(os.path.basename(path))[0]
            name = textured_build.textured_name(rig.name) if collection == rig else stem
            built = textured_build.build_textured(path, name, collection)
            size = "x".join(str(n) for n in built.image.size) if built.image is not None else "?"
            return (f"Imported '{built.objects[0].name}' from {os.path.basename(path)}: {built.vertices} vertices, "
                    f"{built.faces} faces, texture {size}")
        if extension != ".ply":
            raise meshes.MeshError(f"{path}: not a mesh Marble reads (it reads {' and '.join(EXTENSIONS)} files)")
        obj = meshes.build_mesh(path, collection)
        return (f"Imported '{obj.name}' from {os.path.basename(path)}: {len(obj.data.vertices)} vertices, "
                f"{len(obj.data.polygons)} faces")


CLASSES = (MARBLE_OT_import_mesh,)
