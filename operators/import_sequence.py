# SPDX-License-Identifier: GPL-3.0-or-later
"""Import a dynamic job's mesh sequence (meshes/sequence.json): one object per frame, shown at its frame."""
import os

import bpy
from bpy_extras.io_utils import ImportHelper

from ..addon import jobs
from ..engine.io import sequence as sequence_io
from ..addon import scene as builders
from ..addon import sequence as sequences


class MARBLE_OT_import_sequence(bpy.types.Operator, ImportHelper):
    """Import the meshes of a dynamic job (its meshes/sequence.json) as one object per frame, each shown
    only from its frame until the next one, in the rig's collection"""
    bl_idname = "marble.import_sequence"
    bl_label = "Import Sequence"
    bl_options = {'REGISTER', 'UNDO'}

    filename_ext = ".json"
    filter_glob: bpy.props.StringProperty(default="*.json", options={'HIDDEN'})

    def invoke(self, context, event):
        # Start the browser at the last job's sequence (or its meshes folder) when there is one.
        job_dir = jobs.shown_job_dir(context)
        meshes = os.path.join(job_dir, "meshes") if job_dir else ""
        if meshes and os.path.isdir(meshes) and not self.filepath:
            candidate = os.path.join(meshes, sequence_io.SEQUENCE_FILE)
            self.filepath = candidate if os.path.isfile(candidate) else os.path.join(meshes, "")
        return ImportHelper.invoke(self, context, event)

    def execute(self, context):
        path = os.path.abspath(bpy.path.abspath(self.filepath)) if self.filepath else ""
        if not path or not os.path.exists(path):
            self.report({'ERROR'}, f"No such sequence file: {path or '(none given)'}")
            return {'CANCELLED'}
        collection = context.scene.marble.rig_collection
        if collection is None or collection not in context.scene.collection.children_recursive:
            collection = context.scene.collection
        # Everything is read and checked before anything is created; build_sequence cleans up after itself.
        try:
            sequence = sequence_io.read_sequence(path)
            built = sequences.build_sequence(sequence, sequence.name, collection, context.scene)
        except (sequence_io.SequenceError, builders.MeshError, ValueError, OSError) as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        builders.show_color_attributes(context.window_manager)
        frames = [obj[sequences.PROP_FRAME] for obj in built.objects]
        self.report({'INFO'}, f"Imported {len(frames)} frames ({frames[0]} to {frames[-1]}) into "
                              f"'{built.collection.name}'")
        return {'FINISHED'}


CLASSES = (MARBLE_OT_import_sequence,)
