# SPDX-License-Identifier: GPL-3.0-or-later
"""Blender-side core without drawing: preferences, property groups, the job client, scene builders."""
import os

# The extension's package ("bl_ext.<repo>.marble") and its root folder (the one holding engine/).
PACKAGE = __package__.rpartition(".")[0]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from . import preferences, props, scene, jobs  # noqa: E402  (they read PACKAGE and ROOT)


def register():
    preferences.register()
    props.register()
    jobs.register()


def unregister():
    # Stop a running engine first: its events could no longer reach anything.
    jobs.unregister()
    props.unregister()
    preferences.unregister()
