"""The embedded default scene and the demo that reconstructs it through the add-on.

demo.scene renders a dataset with exactly known geometry (a textured torus, the one torus builder)
with Cycles through the bpy module; demo.dynamic_scene renders the same torus, knobbed, moving and
deforming; demo.run reconstructs the static one headless through the installed extension
(`python3 build.py demo`). All need the bpy module (run them with build.py's .venv interpreter).
The benchmarks live in bench/.
"""
