"""Marble's reconstruction engine: a hash-grid SDF trained by NeuS volume rendering.

Never imports Blender. Only `engine.io` (events, job-folder names, PLY, rigs, sequence.json, the region
estimate) and `engine.config` may be imported from Blender's Python: they need the standard library and
numpy alone (tests/io/test_io_imports.py). Everything else needs torch and runs in the engine's own
interpreter (`python -m engine`). Layout: engine/nn (networks, encodings, kernels), engine/train
(trainers, schedules, losses, checkpoints), session.py (a job's resolved set-up); docs/design.md.
"""
