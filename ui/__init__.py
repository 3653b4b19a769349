# SPDX-License-Identifier: GPL-3.0-or-later
"""User interface: the Marble tab of the 3D viewport's sidebar."""
import bpy

from . import panel

CLASSES = panel.CLASSES
register, unregister = bpy.utils.register_classes_factory(CLASSES)
