"""The embedded default scene and the demo that reconstructs it through the add-on.

demo.scene renders a dataset with exactly known geometry (a textured torus) with Cycles through the
bpy module; demo.run reconstructs it headless through the installed extension (`python3 build.py demo`).
Both need the bpy module (run them with build.py's .venv interpreter).
"""
