"""The embedded default scene and the demo that reconstructs it through the add-on.

demo.monkey renders the default dataset (Blender's monkey, closed and painted, with exactly known
geometry); demo.scene the textured torus (the one torus builder) or any OBJ; demo.dynamic_scene the
same torus, knobbed, moving and deforming; demo.picture composes demo.png; demo.run reconstructs the
default headless through the installed extension and exports it textured (`python3 build.py demo`).
All need the bpy module (run them with build.py's .venv interpreter). The benchmarks live in bench/.
"""
