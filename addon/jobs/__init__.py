# SPDX-License-Identifier: GPL-3.0-or-later
"""The job client, by role: command (what runs, and where), process (the engine's subprocess and its
reader thread), reducer (events -> job state, no bpy), effects (events -> the scene), client (start,
cancel, tick). The client's functions are the package's interface."""
from .client import (cancel, current_job, is_running, register, restore_state, shutdown, start,  # noqa: F401
                     start_calibration, start_export, tick, unregister)
from .process import JobError  # noqa: F401
