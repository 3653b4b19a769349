# SPDX-License-Identifier: GPL-3.0-or-later
"""Blender-side core without drawing: preferences, property groups, the job client (jobs/), scene
builders (build/), the camera maths and the rig export."""
from . import preferences, props, jobs


def register():
    preferences.register()
    props.register()
    jobs.register()


def unregister():
    # Stop a running engine first: its events could no longer reach anything.
    jobs.unregister()
    props.unregister()
    preferences.unregister()
