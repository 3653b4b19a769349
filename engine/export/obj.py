"""Wavefront OBJ + MTL text of one textured mesh (the PNG is written beside them), and a reader for
what it writes.

Y up like glTF: positions and normals as (x, z, -y) of world, so Blender's OBJ importer (forward -Z,
up Y) puts the mesh back at world coordinates. OBJ's texture v runs upwards: vt = (u, 1 - v).
Positions are shared across UV seams (one `v` per mesh vertex, one `vt` per UV vertex), so importers
get one connected mesh.
"""
import io

import numpy as np

from .gltf import y_up


def obj_text(positions, normals, faces, uvs, uv_faces, mtl_name, material="Marble"):
    """The .obj file: `positions`/`normals` per mesh vertex (world), `faces` over them, `uvs` per UV
    vertex (glTF's orientation) and `uv_faces` (the same triangles over the UV vertices)."""
    out = io.StringIO()
    out.write(f"# Marble\nmtllib {mtl_name}\no {material}\n")
    np.savetxt(out, y_up(positions), fmt="v %.9g %.9g %.9g")
    np.savetxt(out, np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1), fmt="vt %.9g %.9g")
    np.savetxt(out, y_up(normals), fmt="vn %.6g %.6g %.6g")
    out.write(f"usemtl {material}\ns off\n")
    corners = np.stack([faces + 1, uv_faces + 1, faces + 1], axis=2).reshape(-1, 9)  # v/vt/vn per corner
    np.savetxt(out, corners, fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    return out.getvalue()


def mtl_text(png_name, material="Marble"):
    """The .mtl file: a diffuse-only material with the texture as its colour."""
    return (f"# Marble\nnewmtl {material}\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nNs 0\nd 1\nillum 1\n"
            f"map_Kd {png_name}\n")


def read_obj(path):
    """(positions (N, 3) as stored, uvs (M, 2) as stored, normals, faces (F, 3, 3) of 0-based
    v/vt/vn indices, mtllib name) of a triangle OBJ as written above."""
    positions, uvs, normals, faces, mtllib = [], [], [], [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                positions.append([float(p) for p in parts[1:4]])
            elif parts[0] == "vt":
                uvs.append([float(p) for p in parts[1:3]])
            elif parts[0] == "vn":
                normals.append([float(p) for p in parts[1:4]])
            elif parts[0] == "f":
                faces.append([[int(i) - 1 for i in corner.split("/")] for corner in parts[1:4]])
            elif parts[0] == "mtllib":
                mtllib = line.split(None, 1)[1].strip()
    return np.array(positions), np.array(uvs), np.array(normals), np.array(faces, dtype=np.int64), mtllib
