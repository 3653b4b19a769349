# SPDX-License-Identifier: GPL-3.0-or-later
"""Engine PLY -> mesh objects with a vertex colour attribute and a material that shows it; the preview
mesh replaced in place; Solid shading set to show colour attributes."""
import os

import bpy
import numpy as np

from ...engine.io.ply import PlyError as MeshError, read_ply  # noqa: F401 (MeshError: callers catch it)
from . import blocks

COLOR_ATTRIBUTE = "Color"        # name of the vertex colour attribute of imported meshes
MATERIAL_NAME = "Marble Vertex Color"


def mesh_from_ply(path, name=None):
    """A new mesh datablock from the PLY at `path` (no object); see mesh_from_arrays."""
    return mesh_from_arrays(name or os.path.splitext(os.path.basename(path))[0], read_ply(path))


def mesh_from_arrays(name, arrays):
    """A new mesh datablock from read_ply's (vertices, face starts, loops, colours).

    Vertex colours become the point colour attribute "Color" (sRGB bytes, as the file stores them)
    and the mesh gets a material that shows that attribute.
    """
    vertices, starts, loops, colours = arrays
    mesh = bpy.data.meshes.new(name)
    try:
        mesh.vertices.add(len(vertices))
        # The generic attributes take a whole array at once (Blender 4.0+); vertices.co and
        # loops.vertex_index go element by element, about 100 times slower.
        _set_array(mesh, "position", 'FLOAT_VECTOR', "vector", vertices.ravel(), mesh.vertices, "co")
        if len(starts):
            mesh.loops.add(len(loops))
            _set_array(mesh, ".corner_vert", 'INT', "value", loops, mesh.loops, "vertex_index")
            mesh.polygons.add(len(starts))
            mesh.polygons.foreach_set("loop_start", starts)
        mesh.update(calc_edges=True)
        if len(starts):
            if hasattr(mesh, "shade_smooth"):  # Blender 4.1+
                mesh.shade_smooth()
            else:
                mesh.polygons.foreach_set("use_smooth", np.ones(len(starts), dtype=bool))
        if colours is not None:
            rgba = np.ones((len(vertices), 4), dtype=np.float32)
            rgba[:, :colours.shape[1]] = colours / np.float32(255.0)
            attribute = mesh.color_attributes.new(COLOR_ATTRIBUTE, 'BYTE_COLOR', 'POINT')
            attribute.data.foreach_set("color_srgb", rgba.ravel())
            mesh.color_attributes.active_color = attribute
            mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
            mesh.materials.append(vertex_color_material())
    except Exception:
        blocks.remove([mesh])
        raise
    return mesh


def _set_array(mesh, name, data_type, field, values, fallback, fallback_field):
    """Write `values` into the mesh's attribute `name` when it has one of `data_type` and the right
    size, else element by element into `fallback`.`fallback_field`."""
    attribute = mesh.attributes.get(name)
    width = 3 if data_type == 'FLOAT_VECTOR' else 1
    if attribute is not None and attribute.data_type == data_type and len(attribute.data) * width == len(values):
        attribute.data.foreach_set(field, values)
    else:
        fallback.foreach_set(fallback_field, values)


def build_mesh(path, collection, name=None):
    """Import the PLY at `path` as a new object linked into `collection`; returns the object."""
    mesh = mesh_from_ply(path, name)
    try:
        obj = bpy.data.objects.new(mesh.name if name is None else name, mesh)
        collection.objects.link(obj)
    except Exception:
        blocks.remove([mesh])
        raise
    return obj


def show_color_attributes(window_manager):
    """Make Solid shading in every 3D viewport show colour attributes (Solid mode ignores materials'
    node colours): the imported meshes' vertex colours show there as in Material Preview."""
    count = 0
    for window in getattr(window_manager, "windows", []):
        screen = window.screen
        for area in (screen.areas if screen is not None else []):
            for space in area.spaces:
                if space.type == 'VIEW_3D':
                    # Called 'VERTEX' in the API though the interface says "Attribute".
                    choices = space.shading.bl_rna.properties["color_type"].enum_items.keys()
                    space.shading.color_type = 'ATTRIBUTE' if 'ATTRIBUTE' in choices else 'VERTEX'
                    count += 1
    return count


def replace_mesh(obj, path):
    """Give `obj` the mesh of the PLY at `path` in place of its own (same object, new mesh data; the
    old mesh is freed). The file is read first: a bad file leaves the object as it was."""
    mesh = mesh_from_ply(path, obj.data.name if obj.data is not None else None)
    old = obj.data
    obj.data = mesh
    if old is not None and old.users == 0:
        bpy.data.meshes.remove(old)
    return obj


def vertex_color_material():
    """A material that shades with the mesh's "Color" attribute (shared by all imported meshes)."""
    def colour(nodes):
        node = nodes.new("ShaderNodeVertexColor")
        node.layer_name = COLOR_ATTRIBUTE
        return node
    return colour_material(MATERIAL_NAME, colour)


def colour_material(name, colour_node):
    """The material `name` (made once): a principled BSDF whose base colour is the output "Color" of
    the node `colour_node(nodes)` makes."""
    material = bpy.data.materials.get(name)
    if material is not None:
        return material
    material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):  # node trees are always on (use_nodes deprecated) from 5.0
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next((n for n in nodes if n.type == 'BSDF_PRINCIPLED'), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        output = next((n for n in nodes if n.type == 'OUTPUT_MATERIAL'), None) or nodes.new("ShaderNodeOutputMaterial")
        links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
    color = colour_node(nodes)
    color.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(color.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.8
    return material
