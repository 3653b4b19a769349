# SPDX-License-Identifier: GPL-3.0-or-later
"""Datablock helpers the builders share: removing what a failed build made, and constant keyframes."""
import bpy
import numpy as np

# What a build may create, and where Blender keeps each kind.
KINDS = ((bpy.types.Object, "objects"), (bpy.types.Camera, "cameras"), (bpy.types.Collection, "collections"),
         (bpy.types.Image, "images"), (bpy.types.Mesh, "meshes"), (bpy.types.Action, "actions"))


def remove(ids):
    """Remove the datablocks in `ids`, newest first (those already gone with their owner are skipped)."""
    for block in reversed(ids):
        try:
            data = next((getattr(bpy.data, name) for kind, name in KINDS if isinstance(block, kind)), None)
            if data is not None:
                data.remove(block)
        except ReferenceError:
            pass  # already gone with its owner


def keyframes(id_block, data_path, frames, values, created):
    """Constant-interpolation keyframes on `id_block.data_path` (one F-curve per component)."""
    anim = id_block.animation_data or id_block.animation_data_create()
    action = anim.action
    if action is None:
        action = bpy.data.actions.new(f"{id_block.name} frames")
        created.append(action)
        anim.action = action
    values = np.asarray(values, dtype=float)
    for index in range(values.shape[1]):
        if hasattr(action, "fcurve_ensure_for_datablock"):  # Blender 4.4+: layered actions
            fcurve = action.fcurve_ensure_for_datablock(id_block, data_path, index=index)
        else:
            fcurve = action.fcurves.new(data_path, index=index)
        points = fcurve.keyframe_points
        points.add(len(frames))
        points.foreach_set("co", np.column_stack([frames, values[:, index]]).astype(np.float32).ravel())
        for point in points:
            point.interpolation = 'CONSTANT'
        fcurve.update()
