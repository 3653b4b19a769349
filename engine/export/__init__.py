"""Exports of a job's results: textured meshes (glTF, OBJ), decimated PLY, USD sequences."""
