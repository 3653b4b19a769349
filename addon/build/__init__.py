# SPDX-License-Identifier: GPL-3.0-or-later
"""Scene builders, one module per thing built: rig (cameras), region (the region empty), mesh, sequence
(per-frame objects, also grown live). No operator logic; a failed build leaves nothing behind."""
