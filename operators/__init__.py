# SPDX-License-Identifier: GPL-3.0-or-later
"""Operators: one module per user action (files.py: what the result importers share; file_handlers.py:
File > Import entries and drag and drop). A module's MENUS, (menu class name, draw function) pairs, are
added to Blender's menus in MODULES order; its CLASSES are registered (FileHandlers after their operators)."""
import bpy

from . import (export_rig, export_textured, file_handlers, import_mesh, import_photos, import_rig, import_sequence,
               results, train)

MODULES = (file_handlers, import_rig, import_photos, export_rig, import_mesh, import_sequence, train, results,
           export_textured)
CLASSES = tuple(cls for module in MODULES[1:] + MODULES[:1] for cls in module.CLASSES)
MENUS = tuple(entry for module in MODULES for entry in getattr(module, "MENUS", ()))
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register():
    _register_classes()
    for menu, draw in MENUS:
        getattr(bpy.types, menu).append(draw)


def unregister():
    for menu, draw in reversed(MENUS):
        menu_class = getattr(bpy.types, menu, None)
        if menu_class is not None:
            menu_class.remove(draw)
    _unregister_classes()
