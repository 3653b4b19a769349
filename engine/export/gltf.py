"""glTF 2.0 binary (.glb) of one textured triangle mesh, and a reader for what it writes (numpy, json,
struct).

Marble's meshes are in the dataset's world, Z up (Blender's axes); glTF is Y up. Positions and normals
are written as (x, z, -y), a rotation (the winding stays counter-clockwise outside), so glTF importers
(Blender's with its default +Y up) put the mesh back at world coordinates and any viewer shows it
upright.
"""
import json
import struct

import numpy as np

GLB_MAGIC, GLB_VERSION = 0x46546C67, 2
CHUNK_JSON, CHUNK_BIN = 0x4E4F534A, 0x004E4942
FLOAT, UNSIGNED_INT = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071
TRIANGLES = 4


def y_up(points):
    """World (Z up) -> glTF/OBJ (Y up): (x, y, z) -> (x, z, -y)."""
    points = np.asarray(points, dtype=np.float64)
    return np.stack([points[:, 0], points[:, 2], -points[:, 1]], axis=1)


def z_up(points):
    """The inverse of y_up: glTF/OBJ (Y up) -> world."""
    points = np.asarray(points, dtype=np.float64)
    return np.stack([points[:, 0], -points[:, 2], points[:, 1]], axis=1)


def glb_bytes(positions, normals, uvs, faces, png, name="Marble"):
    """The .glb file's bytes: one mesh (world `positions` and `normals`, per vertex `uvs` in glTF's
    orientation, triangle `faces`) with one material whose base colour is the PNG (`png`: bytes),
    metallic 0, roughness 1."""
    arrays = [  # (bytes, bufferView target) in buffer order
        (np.ascontiguousarray(faces, dtype="<u4").tobytes(), ELEMENT_ARRAY_BUFFER),
        (np.ascontiguousarray(y_up(positions), dtype="<f4").tobytes(), ARRAY_BUFFER),
        (np.ascontiguousarray(y_up(normals), dtype="<f4").tobytes(), ARRAY_BUFFER),
        (np.ascontiguousarray(uvs, dtype="<f4").tobytes(), ARRAY_BUFFER),
        (bytes(png), None),
    ]
    views, blob = [], bytearray()
    for data, target in arrays:
        blob += b"\0" * (-len(blob) % 4)  # every view starts 4-byte aligned
        view = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        views.append(view)
        blob += data
    blob += b"\0" * (-len(blob) % 4)
    points = np.asarray(y_up(positions), dtype=np.float32)
    count = len(points)
    accessors = [
        {"bufferView": 0, "componentType": UNSIGNED_INT, "count": int(np.size(faces)), "type": "SCALAR"},
        {"bufferView": 1, "componentType": FLOAT, "count": count, "type": "VEC3",
         "min": [float(v) for v in points.min(0)], "max": [float(v) for v in points.max(0)]},
        {"bufferView": 2, "componentType": FLOAT, "count": count, "type": "VEC3"},
        {"bufferView": 3, "componentType": FLOAT, "count": count, "type": "VEC2"},
    ]
    document = {
        "asset": {"version": "2.0", "generator": "Marble"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [{"attributes": {"POSITION": 1, "NORMAL": 2, "TEXCOORD_0": 3},
                                                  "indices": 0, "material": 0, "mode": TRIANGLES}]}],
        "materials": [{"name": name, "pbrMetallicRoughness": {"baseColorTexture": {"index": 0},
                                                              "metallicFactor": 0.0, "roughnessFactor": 1.0}}],
        "textures": [{"sampler": 0, "source": 0}],
        "images": [{"bufferView": 4, "mimeType": "image/png"}],
        "samplers": [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR, "wrapS": CLAMP_TO_EDGE,
                      "wrapT": CLAMP_TO_EDGE}],
        "accessors": accessors, "bufferViews": views, "buffers": [{"byteLength": len(blob)}],
    }
    text = json.dumps(document, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    return b"".join([struct.pack("<III", GLB_MAGIC, GLB_VERSION, total),
                     struct.pack("<II", len(text), CHUNK_JSON), text,
                     struct.pack("<II", len(blob), CHUNK_BIN), bytes(blob)])


def read_glb(path):
    """(document, {accessor index: array}, image bytes or None) of a .glb with one binary buffer, as
    written above (arrays as stored: Y up). Raises ValueError naming the file when it is not one."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 20:
        raise ValueError(f"{path}: too short for a glTF binary")
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != GLB_VERSION or total != len(data):
        raise ValueError(f"{path}: not a glTF 2.0 binary (magic, version or length wrong)")
    length, kind = struct.unpack_from("<II", data, 12)
    if kind != CHUNK_JSON:
        raise ValueError(f"{path}: the first chunk is not JSON")
    document = json.loads(data[20:20 + length].decode("utf-8"))
    offset = 20 + length
    blob = b""
    if offset < len(data):
        blob_length, kind = struct.unpack_from("<II", data, offset)
        if kind != CHUNK_BIN:
            raise ValueError(f"{path}: the second chunk is not BIN")
        blob = data[offset + 8:offset + 8 + blob_length]
    views = document.get("bufferViews", [])
    components = {FLOAT: "<f4", UNSIGNED_INT: "<u4", 5123: "<u2", 5121: "u1"}
    widths = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
    arrays = {}
    for index, accessor in enumerate(document.get("accessors", [])):
        view = views[accessor["bufferView"]]
        start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
        dtype = np.dtype(components[accessor["componentType"]])
        width = widths[accessor["type"]]
        values = np.frombuffer(blob, dtype=dtype, count=accessor["count"] * width, offset=start)
        arrays[index] = values.reshape(-1, width) if width > 1 else values
    image = None
    if document.get("images"):
        view = views[document["images"][0]["bufferView"]]
        image = blob[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]]
    return document, arrays, image
