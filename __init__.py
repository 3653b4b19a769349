# SPDX-License-Identifier: GPL-3.0-or-later
"""Marble: meshes from calibrated multi-view photographs, inside Blender.

The extension entry point only wires the parts together; see docs/design.md for the layout.
"""
from . import addon, operators, ui


def register():
    addon.register()
    operators.register()
    ui.register()


def unregister():
    ui.unregister()
    operators.unregister()
    addon.unregister()
