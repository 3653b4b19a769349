# SPDX-License-Identifier: GPL-3.0-or-later
"""Import a dynamic job's mesh sequence (meshes/sequence.json): one object per frame, shown at its frame."""
import os

import bpy

from ..addon.build import mesh as meshes
from ..addon.build import sequence as sequences
from ..addon.jobs import command as commands
from ..engine.io import sequence as sequence_io
from .files import ResultImport, meshes_folder, rig_collection


class MARBLE_OT_import_sequence(bpy.types.Operator, ResultImport):
    """Import the meshes of a dynamic job (its meshes/sequence.json) as one object per frame, each shown
    only from its frame until the next one, in the rig's collection"""
    bl_idname = "marble.import_sequence"
    bl_label = "Import Sequence"
    filename_ext = ".json"
    filter_glob: bpy.props.StringProperty(default="*.json", options={'HIDDEN'})
    missing = "No such sequence file"
    errors = (sequence_io.SequenceError, meshes.MeshError, ValueError, OSError)

    def start_file(self, context):
        # The last job's sequence (or its meshes folder) when there is one.
        folder = meshes_folder(commands.shown_job_dir(context))
        if not folder:
            return ""
        candidate = os.path.join(folder, sequence_io.SEQUENCE_FILE)
        return candidate if os.path.isfile(candidate) else os.path.join(folder, "")

    def exists(self, path):
        return os.path.exists(path)  # a job folder holding one is fine too

    def load(self, context, path):
        # Everything is read and checked before anything is created; build_sequence cleans up after itself.
        sequence = sequence_io.read_sequence(path)
        built = sequences.build_sequence(sequence, sequence.name, rig_collection(context, context.scene.collection),
                                         context.scene)
        frames = [obj[sequences.PROP_FRAME] for obj in built.objects]
        return f"Imported {len(frames)} frames ({frames[0]} to {frames[-1]}) into '{built.collection.name}'"


CLASSES = (MARBLE_OT_import_sequence,)
