# SPDX-License-Identifier: GPL-3.0-or-later
"""Import a dynamic job's mesh sequence: its meshes/sequence.json as one object per frame, shown at its
frame, or a USD sequence Marble wrote (`python -m engine export JOB --format usd`: .usdc, .usd, .usda)
as one object streaming every frame from the file through a Mesh Sequence Cache modifier."""
import os

import bpy

from ..addon.build import mesh as meshes
from ..addon.build import sequence as sequences
from ..addon.build import sequence_cache
from ..addon.build.sequence_cache import build_sequence_cache  # noqa: F401 (the Results panel calls it)
from ..addon.jobs import command as commands
from ..engine.io import protocol
from ..engine.io import sequence as sequence_io
from .files import ResultImport, meshes_folder, rig_collection


class MARBLE_OT_import_sequence(bpy.types.Operator, ResultImport):
    """Import the meshes of a dynamic job: its meshes/sequence.json as one object per frame, each shown
    only from its frame until the next one, or its USD sequence (.usdc) as one object that streams the
    frames from the file; in the rig's collection"""
    bl_idname = "marble.import_sequence"
    bl_label = "Import Sequence"
    filename_ext = ".json"
    filter_glob: bpy.props.StringProperty(default="*.json;*.usd;*.usdc;*.usda", options={'HIDDEN'})
    missing = "No such sequence file"
    errors = (sequence_io.SequenceError, sequence_cache.SequenceCacheError, meshes.MeshError, ValueError, OSError)

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
        parent = rig_collection(context, context.scene.collection)
        if sequence_cache.is_usd_path(path):
            obj = build_sequence_cache(path, None, parent, context.scene)
            scene = context.scene
            return (f"Imported frames {scene.frame_start} to {scene.frame_end} as '{obj.name}', streamed from "
                    f"{os.path.basename(path)}")
        # Everything is read and checked before anything is created; build_sequence cleans up after itself.
        sequence = sequence_io.read_sequence(path)
        built = sequences.build_sequence(sequence, sequence.name, parent, context.scene)
        frames = [obj[sequences.PROP_FRAME] for obj in built.objects]
        return f"Imported {len(frames)} frames ({frames[0]} to {frames[-1]}) into '{built.collection.name}'"


def usd_sequence_path(job_dir):
    """A job's meshes/sequence.usdc (whether or not it exists)."""
    return os.path.join(job_dir, protocol.MESHES_DIR, protocol.USD_SEQUENCE_FILE)


CLASSES = (MARBLE_OT_import_sequence,)
