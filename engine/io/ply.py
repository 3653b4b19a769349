"""PLY meshes: the engine's writer and a reader for any PLY (numpy and the standard library only).

Blender's Python imports this module too (the add-on imports engine meshes with it), so it needs
nothing but numpy.
"""

import numpy as np

from .protocol import write_atomic


class PlyError(ValueError):
    """A mesh file that cannot be used; the message names the file."""


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
    write_atomic(path, ("\n".join(header) + "\n").encode("ascii") + vdata.tobytes() + fdata.tobytes())


def read_triangles(path):
    """Vertices (N, 3) float64, triangles (M, 3) int64 and colours (N, 3) in [0, 1] or None.

    Polygons with more than three corners are fanned into triangles."""
    vertices, starts, loops, colours = read_ply(path)
    sizes = np.diff(np.append(starts, len(loops)))
    if len(sizes) and (sizes == 3).all():
        faces = loops.reshape(-1, 3)
    else:
        faces = np.array([(loops[s], loops[s + k], loops[s + k + 1]) for s, n in zip(starts, sizes)
                          for k in range(1, n - 1)], dtype=np.int64).reshape(-1, 3)
    colours = None if colours is None else colours[:, :3] / 255.0
    return vertices.astype(np.float64), faces.astype(np.int64), colours


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def read_ply(path):
    """Read a PLY mesh (binary either endianness, or ASCII).

    Returns (vertices float32 (n, 3), loop_starts int32 (m,), loop_vertices int32 (k,),
    colours uint8 (n, 3 or 4) or None). Raises PlyError naming the file when it cannot be used.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise PlyError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        fmt, elements, body = _ply_header(data)
        if fmt == "ascii":
            values = _ply_ascii(elements, data[body:].decode("ascii"))
        else:
            values = _ply_binary(elements, data, body, "<" if fmt == "binary_little_endian" else ">")
    except PlyError as exc:
        raise PlyError(f"{path}: {exc}") from None
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise PlyError(f"{path}: damaged or truncated PLY data ({exc})") from None

    vertex = values.get("vertex")
    if vertex is None or not {"x", "y", "z"} <= set(vertex):
        raise PlyError(f"{path}: no vertex element with x, y, z")
    vertices = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)
    if len(vertices) == 0:
        raise PlyError(f"{path}: the mesh has no vertices")
    if not np.isfinite(vertices).all():
        raise PlyError(f"{path}: vertex coordinates contain NaN or infinite numbers")
    colours = None
    names = [n for n in ("red", "green", "blue", "alpha") if n in vertex]
    if names[:3] == ["red", "green", "blue"]:
        columns = [np.asarray(vertex[n]) for n in names]
        if columns[0].dtype.kind == "f":  # float colours in 0..1
            colours = np.clip(np.stack(columns, axis=1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            colours = np.clip(np.stack(columns, axis=1), 0, 255).astype(np.uint8)

    starts = np.zeros(0, dtype=np.int32)
    loops = np.zeros(0, dtype=np.int32)
    face = values.get("face")
    if face is not None:
        key = "vertex_indices" if "vertex_indices" in face else "vertex_index" if "vertex_index" in face else None
        if key is None:
            raise PlyError(f"{path}: the face element has no vertex_indices list")
        starts, loops = face[key]
        if len(loops) and (loops.min() < 0 or loops.max() >= len(vertices)):
            raise PlyError(f"{path}: a face refers to a vertex that does not exist "
                            f"(index {int(loops.max() if loops.max() >= len(vertices) else loops.min())}, "
                            f"{len(vertices)} vertices)")
        sizes = np.diff(np.append(starts, len(loops)))
        if len(sizes) and sizes.min() < 3:
            raise PlyError(f"{path}: a face has fewer than 3 vertices")
    return vertices, starts.astype(np.int32), loops.astype(np.int32), colours


def _ply_header(data):
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise PlyError("not a PLY file (no 'ply' magic or no end_header)")
    body = data.index(b"\n", end) + 1
    fmt, elements = None, []
    for line in data[:end].decode("ascii", "replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1]
            if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
                raise PlyError(f"unknown PLY format {fmt!r}")
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise PlyError("a property before any element")
            if words[1] == "list":
                elements[-1][2].append((words[4], _ply_type(words[2]), _ply_type(words[3])))
            else:
                elements[-1][2].append((words[2], _ply_type(words[1]), None))
    if fmt is None:
        raise PlyError("the header has no format line")
    return fmt, elements, body


def _ply_type(name):
    if name not in _PLY_TYPES:
        raise PlyError(f"unknown PLY property type {name!r}")
    return _PLY_TYPES[name]


def _ply_binary(elements, data, offset, order):
    values = {}
    for name, count, props in elements:
        if all(item is None for _, _, item in props):
            dtype = np.dtype([(p, order + t) for p, t, _ in props])
            if offset + count * dtype.itemsize > len(data):
                raise PlyError(f"the file ends inside element '{name}'")
            array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
            offset += count * dtype.itemsize
            values[name] = {p: array[p] for p, _, _ in props}
            continue
        fixed = _ply_binary_fixed_lists(props, data, offset, order, count) if count else None
        if fixed is not None:
            values[name], offset = fixed
        else:
            values[name], offset = _ply_binary_walk(props, data, offset, order, count)
    return values


def _ply_binary_fixed_lists(props, data, offset, order, count):
    """Fast path: every list of the element has the length of the first row's (triangle meshes)."""
    fields, pos = [], offset
    for p, t, item in props:
        if item is None:
            fields.append((p, order + t))
            pos += np.dtype(t).itemsize
        else:
            n = int(np.frombuffer(data, dtype=order + t, count=1, offset=pos)[0])
            if n <= 0:
                return None
            fields.append((p + "#n", order + t))
            fields.append((p, order + item, (n,)))
            pos += np.dtype(t).itemsize + n * np.dtype(item).itemsize
    dtype = np.dtype(fields)
    if offset + count * dtype.itemsize > len(data):
        return None
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    out = {}
    for p, t, item in props:
        if item is None:
            out[p] = array[p]
            continue
        n = array.dtype[p].shape[0] if array.dtype[p].shape else 1
        if not (array[p + "#n"] == n).all():
            return None
        out[p] = (np.arange(count, dtype=np.int64) * n, array[p].reshape(-1).astype(np.int64))
    return out, offset + count * dtype.itemsize


def _ply_binary_walk(props, data, offset, order, count):
    """General path: lists of any length, one row at a time."""
    columns = {p: [] for p, _, _ in props}
    for _ in range(count):
        for p, t, item in props:
            size = np.dtype(t).itemsize
            value = np.frombuffer(data, dtype=order + t, count=1, offset=offset)[0]
            offset += size
            if item is None:
                columns[p].append(value)
            else:
                n = int(value)
                row = np.frombuffer(data, dtype=order + item, count=n, offset=offset)
                offset += n * np.dtype(item).itemsize
                columns[p].append(row)
    out = {}
    for p, t, item in props:
        out[p] = np.array(columns[p]) if item is None else _concat_lists(columns[p])
    return out, offset


def _concat_lists(rows):
    sizes = np.array([len(r) for r in rows], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(rows) else np.zeros(0, np.int64)
    flat = np.concatenate(rows).astype(np.int64) if len(rows) else np.zeros(0, np.int64)
    return starts, flat


def _ply_ascii(elements, body):
    tokens = body.split()
    pos = 0
    values = {}
    for name, count, props in elements:
        if all(item is None for _, _, item in props):
            n = len(props)
            block = np.array(tokens[pos:pos + count * n], dtype=np.float64)
            if block.size != count * n:
                raise PlyError(f"the file ends inside element '{name}'")
            pos += count * n
            block = block.reshape(count, n)
            values[name] = {p: block[:, i].astype(t) for i, (p, t, _) in enumerate(props)}
            continue
        columns = {p: [] for p, _, _ in props}
        for _ in range(count):
            for p, t, item in props:
                if item is None:
                    columns[p].append(float(tokens[pos]))
                    pos += 1
                else:
                    n = int(tokens[pos])
                    columns[p].append(np.array(tokens[pos + 1:pos + 1 + n], dtype=np.int64))
                    pos += 1 + n
        values[name] = {p: (np.array(columns[p]) if item is None else _concat_lists(columns[p]))
                        for p, _, item in props}
    return values
