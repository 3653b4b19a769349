# SPDX-License-Identifier: GPL-3.0-or-later
"""Operators: one module per user action."""
import bpy

from . import import_rig, export_rig, import_mesh, import_sequence, results, train

MODULES = (import_rig, export_rig, import_mesh, import_sequence, train, results)


def register():
    for module in MODULES:
        for cls in module.CLASSES:
            bpy.utils.register_class(cls)


def unregister():
    for module in reversed(MODULES):
        for cls in reversed(module.CLASSES):
            bpy.utils.unregister_class(cls)
