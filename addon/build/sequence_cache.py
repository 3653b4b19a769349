# SPDX-License-Identifier: GPL-3.0-or-later
"""A USD mesh sequence (engine.export.usd: one time-sampled mesh prim, /sequence) -> ONE object whose
Mesh Sequence Cache modifier streams the frame shown from the file, so memory and the .blend stay the
size of one frame whatever the number of frames.

Blender's own USD importer (bpy.ops.wm.usd_import) does the reading: it opens the stage, sets the
scene's frame range from its start and end time codes, and makes the object with the cache modifier
(a CacheFile pointing at the file, object path /sequence) for a time-varying mesh; the bpy module has
no `pxr` to read the stage with otherwise. Vertex colours arrive through the cache as the colour
attribute "displayColor" (linear float colours), which the material "Marble Display Color" shows
(Solid mode shows it once shading is set to Attribute). The points are world coordinates (the writer
applied any world_from_canonical), so the object sits at the identity, among the rig's cameras.

The file is checked first (it exists and starts like a USD file); whatever the importer then makes is
checked (exactly one mesh object, the cache on /sequence, a mesh at the first frame) and, on any
failure, removed again with the scene's frame range put back.
"""
import os

import bpy

from .mesh import colour_material
from .sequence import set_frame_range

PRIM_PATH = "/sequence"          # engine.export.usd.PRIM_PATH
COLOR_ATTRIBUTE = "displayColor"  # the name Blender gives USD's primvars:displayColor
MATERIAL_NAME = "Marble Display Color"
PROP_USD = "marble_usd"          # object: the USD file it streams
USD_EXTENSIONS = (".usd", ".usdc", ".usda")
# What Blender's USD importer may create, by bpy.data collection (all removed on failure).
_DATA = ("objects", "meshes", "materials", "cache_files", "collections", "images", "actions", "node_groups",
         "cameras", "lights", "curves", "pointclouds", "volumes")


class SequenceCacheError(ValueError):
    """A USD file that cannot be imported as a Marble sequence; the message names the file."""


def is_usd_path(path):
    return os.path.splitext(str(path))[1].lower() in USD_EXTENSIONS


def check_usd_file(path):
    """The absolute path of `path` when it is a readable USD file (crate or text); else
    SequenceCacheError naming the file and the problem."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise SequenceCacheError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise SequenceCacheError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not (head.startswith(b"PXR-USDC") or head.startswith(b"#usda ")):
        kind = "a USDZ package (zip): export .usdc" if head.startswith(b"PK") else "not a USD file"
        raise SequenceCacheError(f"{path}: {kind} (a USD sequence from `python -m engine export JOB --format usd` "
                                 f"is expected)")
    return path


def build_sequence_cache(usd_path, name=None, parent_collection=None, scene=None):
    """One mesh object named `name` (default: the file's job or stem) in `parent_collection` (default:
    the scene's collection) streaming the USD sequence `usd_path` through a Mesh Sequence Cache
    modifier; the scene's frame range becomes the sequence's and the current frame its first. Returns
    the object. SequenceCacheError (nothing added, the frame range as it was) when the file is not a
    USD file or holds no Marble sequence."""
    path = check_usd_file(usd_path)
    scene = scene or bpy.context.scene
    parent_collection = parent_collection or scene.collection
    before = {kind: set(getattr(bpy.data, kind, ())) for kind in _DATA}
    frame_range = scene.frame_start, scene.frame_end, scene.frame_current
    try:
        obj = _import(path, scene)
        _settle(obj, path, name or sequence_name(path), parent_collection, scene)
    except BaseException:
        _remove_new(before)
        set_frame_range(scene, *frame_range[:2])
        scene.frame_current = frame_range[2]
        raise
    return obj


def _import(path, scene):
    """Run Blender's USD importer on `path` for the prim /sequence only; returns the one object made."""
    options = {"filepath": path, "prim_path_mask": PRIM_PATH, "set_frame_range": True, "import_meshes": True,
               "read_mesh_colors": True, "import_materials": False, "create_collection": False,
               "import_cameras": False, "import_lights": False, "import_curves": False, "import_volumes": False,
               "import_shapes": False, "import_points": False, "import_skeletons": False,
               "import_blendshapes": False, "import_subdiv": False, "import_subdivision": False,
               "create_world_material": False, "relative_path": False}
    known = bpy.ops.wm.usd_import.get_rna_type().properties.keys()
    objects = set(bpy.data.objects)
    with bpy.context.temp_override(scene=scene):
        try:
            result = bpy.ops.wm.usd_import(**{k: v for k, v in options.items() if k in known})
        except RuntimeError as exc:  # the importer's own report, raised by the operator call
            raise SequenceCacheError(f"{path}: Blender's USD importer failed ({str(exc).strip()})") from None
    made = [o for o in bpy.data.objects if o not in objects]
    if result != {'FINISHED'} or not made:
        raise SequenceCacheError(f"{path}: no mesh at {PRIM_PATH}: not a USD sequence written by Marble")
    meshes = [o for o in made if o.type == 'MESH']
    if len(made) != 1 or len(meshes) != 1:
        raise SequenceCacheError(f"{path}: {PRIM_PATH} made {len(made)} objects, expected one mesh")
    return meshes[0]


def _settle(obj, path, name, parent_collection, scene):
    """The imported object as Marble wants it: named, in `parent_collection` only, every kind of data
    read from the cache, the colour material, at the first frame."""
    for collection in list(obj.users_collection):
        collection.objects.unlink(obj)
    parent_collection.objects.link(obj)
    obj.name = name
    if obj.data is not None:
        obj.data.name = name
    caches = [m for m in obj.modifiers if m.type == 'MESH_SEQUENCE_CACHE']
    for modifier in caches:
        choices = modifier.bl_rna.properties["read_data"].enum_items.keys()
        modifier.read_data = set(choices)  # vertices, faces, UVs, colours (generic attributes where offered)
        if modifier.cache_file is not None:
            modifier.cache_file.name = name
    if caches and caches[0].object_path != PRIM_PATH:
        raise SequenceCacheError(f"{path}: the cache reads {caches[0].object_path}, not {PRIM_PATH}")
    obj[PROP_USD] = path
    obj.data.materials.clear()
    obj.data.materials.append(display_color_material())
    scene.frame_set(scene.frame_start)
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    if len(evaluated.data.vertices) == 0:
        raise SequenceCacheError(f"{path}: the mesh at {PRIM_PATH} is empty at frame {scene.frame_start}")


def display_color_material():
    """A material that shades with the cache's "displayColor" attribute (made once, shared)."""
    def colour(nodes):
        node = nodes.new("ShaderNodeVertexColor")
        node.layer_name = COLOR_ATTRIBUTE
        return node
    return colour_material(MATERIAL_NAME, colour)


def sequence_name(path):
    """JOB for JOB/meshes/sequence.usdc, else the file's stem."""
    folder, base = os.path.split(os.path.abspath(path))
    stem = os.path.splitext(base)[0]
    if stem == "sequence" and os.path.basename(folder) == "meshes" and os.path.basename(os.path.dirname(folder)):
        return os.path.basename(os.path.dirname(folder))
    return stem or "sequence"


def _remove_new(before):
    """Remove every datablock made since `before` (what the importer and this module made)."""
    for kind in _DATA:  # objects first, then what they used
        data = getattr(bpy.data, kind, None)
        if data is None:
            continue
        new = [b for b in data if b not in before[kind]]
        if not new:
            continue
        try:  # cache_files has no remove(); batch_remove takes every kind
            bpy.data.batch_remove(new)
        except (ReferenceError, RuntimeError):
            pass
