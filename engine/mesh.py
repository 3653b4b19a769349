"""Zero level set extraction (block-wise marching cubes) and PLY output."""
import os

import mcubes
import numpy as np
import torch


@torch.no_grad()
def extract_mesh(sdf_fn, resolution, bounds=(-1.0, 1.0), block=128, inside_fn=None, chunk=131072):
    """Vertices (V, 3) and faces (F, 3) of {sdf = 0} on a resolution^3 lattice spanning `bounds`.

    `sdf_fn` maps (N, 3) float tensors to (N,) SDF values (negative inside). The lattice is processed
    in blocks of `block`^3 cells that share their boundary samples, so memory stays bounded at any
    resolution; vertices on shared block faces are welded. Points where `inside_fn` is False are
    treated as empty space.
    """
    lo, hi = (np.full(3, bounds[0], float), np.full(3, bounds[1], float)) if np.isscalar(bounds[0]) else \
        (np.asarray(bounds[0], float), np.asarray(bounds[1], float))
    n = resolution + 1  # lattice points per axis
    spacing = (hi - lo) / resolution
    vertices, faces, count = [], [], 0
    for i0 in range(0, resolution, block):
        for j0 in range(0, resolution, block):
            for k0 in range(0, resolution, block):
                idx = [np.arange(s, min(s + block, resolution) + 1) for s in (i0, j0, k0)]
                axes = [torch.tensor(lo[a] + idx[a] * spacing[a], dtype=torch.float32) for a in range(3)]
                pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
                # Only points inside the region are evaluated; the rest are empty space.
                inside = inside_fn(pts) if inside_fn is not None else torch.ones(len(pts), dtype=torch.bool)
                if not inside.any():
                    continue
                values = torch.full((len(pts),), float(spacing.max()))
                values[inside] = torch.cat([sdf_fn(p) for p in pts[inside].split(chunk)])
                volume = values.view(len(idx[0]), len(idx[1]), len(idx[2])).numpy().astype(np.float64)
                if volume.min() > 0 or volume.max() < 0:
                    continue
                # mcubes puts the outside (larger values) on the normals' side when fed -sdf.
                v, f = mcubes.marching_cubes(-volume, 0.0)
                if len(f) == 0:
                    continue
                vertices.append(v + np.array([i0, j0, k0]))
                faces.append(f + count)
                count += len(v)
    if not vertices:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    vertices, faces = np.concatenate(vertices), np.concatenate(faces).astype(np.int64)
    # Weld the copies of seam vertices: they come from the same lattice edge and values, so they match.
    keys = np.round(vertices * 1024).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    vertices, faces = vertices[first], inverse.reshape(-1)[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    return lo + vertices * spacing, faces


def write_ply(path, vertices, faces, colors=None):
    """Binary little-endian PLY: float x y z, optional uchar red green blue, uchar-int face lists.

    Written under a temporary name and renamed, so readers never see half a file."""
    vertices = np.asarray(vertices, dtype="<f4")
    faces = np.asarray(faces, dtype="<i4")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(vertices)}",
              "property float x", "property float y", "property float z"]
    vtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        vtype += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    vdata = np.empty(len(vertices), dtype=vtype)
    vdata["x"], vdata["y"], vdata["z"] = vertices.T
    if colors is not None:
        rgb = np.clip(np.asarray(colors) * 255.0 + 0.5, 0, 255).astype("u1")
        vdata["red"], vdata["green"], vdata["blue"] = rgb.T
    fdata = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    fdata["n"], fdata["i"] = 3, faces
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vdata.tobytes())
        f.write(fdata.tobytes())
    os.replace(tmp, path)


def read_ply(path):
    """Vertices, faces and colours (or None) of a PLY file (binary little-endian or ASCII, triangles)."""
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        fmt, elements = None, []
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words:
                continue
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append((words[1], int(words[2]), []))
            elif words[0] == "property":
                elements[-1][2].append(words[1:])
            elif words[0] == "end_header":
                break
        body = f.read()
    types = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "uint8": "u1",
             "char": "i1", "int8": "i1", "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
             "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4"}
    data = {}
    if fmt == "ascii":
        tokens = iter(body.split())
        for name, count, props in elements:
            rows = []
            for _ in range(count):
                row = []
                for prop in props:
                    if prop[0] == "list":
                        row.append([float(next(tokens)) for _ in range(int(next(tokens)))])
                    else:
                        row.append(float(next(tokens)))
                rows.append(row)
            data[name] = (props, rows)
        vprops, vrows = data["vertex"]
        names = [p[-1] for p in vprops]
        varr = np.array(vrows, dtype=float).reshape(-1, len(names))
        faces = np.array([r[0] for r in data.get("face", ([], []))[1]], dtype=np.int64).reshape(-1, 3)
    elif fmt == "binary_little_endian":
        offset, varr, names, faces = 0, None, None, np.zeros((0, 3), np.int64)
        for name, count, props in elements:
            if any(p[0] == "list" for p in props):
                if len(props) != 1 or count == 0:
                    raise ValueError(f"{path}: unsupported list element {name}")
                ctype, itype = types[props[0][1]], types[props[0][2]]
                dt = np.dtype([("n", "<" + ctype), ("i", "<" + itype, (3,))])
                arr = np.frombuffer(body, dtype=dt, count=count, offset=offset)
                if (arr["n"] != 3).any():
                    raise ValueError(f"{path}: only triangle faces are supported")
                offset += dt.itemsize * count
                if name == "face":
                    faces = arr["i"].astype(np.int64)
            else:
                dt = np.dtype([(p[1], "<" + types[p[0]]) for p in props])
                arr = np.frombuffer(body, dtype=dt, count=count, offset=offset)
                offset += dt.itemsize * count
                if name == "vertex":
                    names = [p[1] for p in props]
                    varr = np.stack([arr[n].astype(float) for n in names], -1)
    else:
        raise ValueError(f"{path}: unsupported PLY format {fmt}")
    col = {n: i for i, n in enumerate(names)}
    vertices = varr[:, [col["x"], col["y"], col["z"]]]
    colors = varr[:, [col["red"], col["green"], col["blue"]]] / 255.0 if "red" in col else None
    return vertices, faces, colors
