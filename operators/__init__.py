# SPDX-License-Identifier: GPL-3.0-or-later
"""Operators: one module per user action (files.py: what the result importers share)."""
import bpy

from . import import_rig, export_rig, import_mesh, import_sequence, results, train

MODULES = (import_rig, export_rig, import_mesh, import_sequence, train, results)
CLASSES = tuple(cls for module in MODULES for cls in module.CLASSES)
register, unregister = bpy.utils.register_classes_factory(CLASSES)
