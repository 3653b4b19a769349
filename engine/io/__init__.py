"""What Blender's Python may import from the engine: the event protocol and job-folder names, PLY
meshes, camera rigs, sequence.json and the region estimate. Standard library and numpy only (a test
fails if a module here imports torch or bpy)."""
