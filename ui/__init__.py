# SPDX-License-Identifier: GPL-3.0-or-later
"""User interface: the Marble tab of the 3D viewport's sidebar."""
import bpy

from . import panel

CLASSES = panel.CLASSES


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
