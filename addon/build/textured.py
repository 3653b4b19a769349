# SPDX-License-Identifier: GPL-3.0-or-later
"""A textured mesh Marble wrote (JOB/meshes/mesh_textured.glb, glTF binary with an embedded PNG) ->
mesh object(s) named "<rig> textured" in the rig's collection.

Blender's own glTF importer reads it with its default axis conversion: the engine writes positions as
(x, z, -y) of the world, so they come back exactly at the dataset's world coordinates, lined up with
the cameras. The importer's leftovers (parent empties, collections) go, parent transforms are baked
into the mesh. The file is checked first (glTF binary header, JSON chunk, a mesh with texture
coordinates, an image) and the import afterwards (a UV map, a material whose Principled BSDF Base
Color comes from an Image Texture with the baked image, packed into the .blend by the importer); a
failure removes everything the import made. An earlier "<rig> textured" of the same collection is
replaced in place: the same object gets the new mesh, and the old mesh, material and image go.
"""
import collections
import json
import os
import struct

import bpy

GLB_MAGIC = b"glTF"
CHUNK_JSON = 0x4E4F534A
MAX_JSON_BYTES = 64 << 20       # a JSON chunk larger than this is no Marble file
PROP_TEXTURED = "marble_textured"  # on the objects: the name of the textured mesh they make up
PROP_SOURCE = "marble_source"      # on the objects: the file they came from

# What the importer may create, and where Blender keeps each kind (removed in this order on failure).
DATA = ("objects", "meshes", "materials", "images", "textures", "node_groups", "actions", "cameras", "lights",
        "armatures", "collections")

Textured = collections.namedtuple("Textured", "objects vertices faces image")


class TexturedError(ValueError):
    """A textured mesh that cannot be imported; the message names the file and the problem."""


def read_glb_header(path):
    """Check that `path` is a glTF binary file Blender can import as a textured mesh and return its JSON
    (dict). Raises TexturedError naming the file and the problem."""
    if not os.path.isfile(path):
        raise TexturedError(f"{path}: no such file")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            header = f.read(20)
            if len(header) < 20 or header[:4] != GLB_MAGIC:
                raise TexturedError(f"{path}: not a glTF binary file (.glb): it does not start with 'glTF'")
            version, length, chunk_length, chunk_type = struct.unpack("<IIII", header[4:20])
            if version != 2:
                raise TexturedError(f"{path}: glTF version {version}; Marble writes (and Blender reads) version 2")
            if length != size:
                raise TexturedError(f"{path}: truncated or padded: the header says {length} bytes, the file has {size}")
            if chunk_type != CHUNK_JSON or chunk_length > min(MAX_JSON_BYTES, size - 20):
                raise TexturedError(f"{path}: the first chunk is not a JSON chunk of a possible length")
            text = f.read(chunk_length)
    except OSError as exc:
        raise TexturedError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        document = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TexturedError(f"{path}: the JSON chunk is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(document, dict) or not isinstance(document.get("asset"), dict):
        raise TexturedError(f"{path}: the JSON chunk is no glTF document (no 'asset')")
    meshes = document.get("meshes")
    if not isinstance(meshes, list) or not meshes:
        raise TexturedError(f"{path}: holds no mesh")
    primitives = [p for m in meshes if isinstance(m, dict) for p in (m.get("primitives") or []) if isinstance(p, dict)]
    if not any(isinstance(p.get("attributes"), dict) and "TEXCOORD_0" in p["attributes"] for p in primitives):
        raise TexturedError(f"{path}: its mesh has no texture coordinates (TEXCOORD_0): not a textured mesh")
    if not isinstance(document.get("images"), list) or not document["images"]:
        raise TexturedError(f"{path}: holds no image: not a textured mesh")
    return document


def base_color_image(material):
    """The image of the Image Texture node the material's Principled BSDF Base Color comes from
    (directly or through other nodes), else None."""
    tree = getattr(material, "node_tree", None) if material is not None else None
    if tree is None:
        return None
    for bsdf in (n for n in tree.nodes if n.type == 'BSDF_PRINCIPLED'):
        todo, seen = [bsdf.inputs["Base Color"]], set()
        while todo:
            socket = todo.pop()
            for link in socket.links:
                node = link.from_node
                if node.name in seen:
                    continue
                seen.add(node.name)
                if node.type == 'TEX_IMAGE' and node.image is not None:
                    return node.image
                todo.extend(node.inputs)
    return None


def _snapshot():
    return {kind: set(getattr(bpy.data, kind)) for kind in DATA}


def _new_since(before):
    return {kind: [block for block in getattr(bpy.data, kind) if block not in before[kind]] for kind in DATA}


def _remove(new):
    """Remove the datablocks `new` ({kind: [blocks]}) holds, objects first."""
    for kind in DATA:
        for block in new.get(kind, ()):
            try:
                getattr(bpy.data, kind).remove(block)
            except (ReferenceError, RuntimeError):
                pass  # already gone with its owner


def _world_matrix(obj):
    """The object's world matrix from its parents (no depsgraph needed: right after an import)."""
    matrix = obj.matrix_basis.copy()
    while obj.parent is not None:
        matrix = obj.matrix_parent_inverse @ matrix
        obj = obj.parent
        matrix = obj.matrix_basis @ matrix
    return matrix


def _context_override():
    """A window for the importer when this runs outside one (a timer's tick), if Blender has one."""
    wm = bpy.context.window_manager
    if bpy.context.window is None and wm is not None and len(wm.windows):
        return {"window": wm.windows[0]}
    return {}


def _import(path):
    """Blender's glTF importer on `path`, default settings; returns what it created ({kind: [blocks]})."""
    before = _snapshot()
    try:
        with bpy.context.temp_override(**_context_override()):
            result = bpy.ops.import_scene.gltf(filepath=path)
    except (RuntimeError, AttributeError, TypeError, ValueError) as exc:
        _remove(_new_since(before))
        raise TexturedError(f"{path}: Blender's glTF importer failed: {str(exc).strip()}") from None
    new = _new_since(before)
    if result != {'FINISHED'}:
        _remove(new)
        raise TexturedError(f"{path}: Blender's glTF importer did not import it ({', '.join(sorted(result))})")
    return new


def _check(path, objects):
    """Every imported mesh has a UV map and a material whose Base Color comes from an image; returns the
    image (the first). Raises TexturedError."""
    if not objects:
        raise TexturedError(f"{path}: Blender's glTF importer made no mesh object of it")
    image = None
    for obj in objects:
        if not obj.data.uv_layers:
            raise TexturedError(f"{path}: the imported mesh has no UV map")
        images = [base_color_image(slot.material) for slot in obj.material_slots]
        images = [i for i in images if i is not None]
        if not images:
            raise TexturedError(f"{path}: the imported mesh has no material whose Base Color comes from an image")
        image = image or images[0]
    return image


def _place(objects, leftovers, collection, name, path):
    """Bake the importer's parent transforms into the meshes, move them into `collection`, remove the
    leftovers (empties, collections) and name them."""
    for obj in objects:
        matrix = _world_matrix(obj)
        obj.parent = None
        obj.matrix_parent_inverse.identity()
        if obj.data.users == 1:
            obj.data.transform(matrix)
            obj.matrix_basis.identity()
        else:
            obj.matrix_basis = matrix
    _remove({"objects": leftovers["objects"]})
    _remove({kind: [b for b in leftovers[kind] if b.users == 0] for kind in ("cameras", "lights", "armatures")})
    for obj in objects:
        for owner in list(obj.users_collection):
            owner.objects.unlink(obj)
        collection.objects.link(obj)
        obj[PROP_TEXTURED] = name
        obj[PROP_SOURCE] = path
    _remove({"collections": leftovers["collections"]})


def _mesh_materials_images(mesh):
    materials = [m for m in mesh.materials if m is not None]
    images = [img for m in materials for img in [base_color_image(m)] if img is not None]
    return materials, images


def _remove_orphans(meshes):
    """Remove `meshes` no object uses any more, then their materials and images nobody else uses."""
    for mesh in meshes:
        if mesh.users:
            continue
        materials, images = _mesh_materials_images(mesh)
        bpy.data.meshes.remove(mesh)
        for material in materials:
            if material.users == 0:
                bpy.data.materials.remove(material)
        for image in images:
            if image.users == 0:
                bpy.data.images.remove(image)


def _names(name, count):
    return [name if i == 0 else f"{name} {i + 1}" for i in range(count)]


def _rename(objects, name):
    """Objects, meshes, materials and images named after the textured mesh."""
    for obj, label in zip(objects, _names(name, len(objects))):
        obj.name = obj.data.name = label
        materials, images = _mesh_materials_images(obj.data)
        for i, material in enumerate(materials):
            material.name = label if i == 0 else f"{label} {i + 1}"
        for i, image in enumerate(images):
            image.name = label if i == 0 else f"{label} {i + 1}"


def textured_name(rig_name):
    """What a rig's textured mesh is called: "<rig> textured" (one per rig: a new export replaces it)."""
    return f"{rig_name} textured" if rig_name else "Marble textured"


def previous(collection, name):
    """The objects of an earlier import of the textured mesh `name` in `collection`."""
    return [obj for obj in collection.objects if obj.get(PROP_TEXTURED) == name and obj.type == 'MESH']


def build_textured(path, name, collection):
    """Import Marble's textured mesh (.glb) at `path` as the object(s) `name` in `collection`, replacing
    an earlier import of the same name there; returns Textured(objects, vertices, faces, image).
    Raises TexturedError (naming the file) and leaves nothing when it cannot."""
    path = os.path.abspath(path)
    read_glb_header(path)
    new = _import(path)
    objects = [obj for obj in new["objects"] if obj.type == 'MESH']
    try:
        image = _check(path, objects)
        leftovers = dict(new, objects=[obj for obj in new["objects"] if obj.type != 'MESH'])
        _place(objects, leftovers, collection, name, path)
    except Exception:
        _remove(new)
        raise
    old = previous(collection, name)
    old = [obj for obj in old if obj not in objects]
    old_meshes = [obj.data for obj in old]
    if len(old) == len(objects):
        # In place: the earlier objects (moved, with modifiers, selected...) take the new meshes.
        for before, fresh in zip(old, objects):
            before.data = fresh.data
            before[PROP_SOURCE] = path
            bpy.data.objects.remove(fresh)
        objects = old
    else:
        for obj in old:
            bpy.data.objects.remove(obj)
    _remove_orphans(old_meshes)
    _rename(objects, name)
    vertices = sum(len(obj.data.vertices) for obj in objects)
    faces = sum(len(obj.data.polygons) for obj in objects)
    return Textured(objects, vertices, faces, image)
