"""Marble's reconstruction engine: a hash-grid SDF trained by NeuS volume rendering.

Never imports Blender. Only `engine.io.protocol` and `engine.io.rig` may be imported from Blender's Python;
everything else needs torch and runs in the engine's own interpreter (`python -m engine`).
"""
