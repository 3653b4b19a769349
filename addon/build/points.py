# SPDX-License-Identifier: GPL-3.0-or-later
"""A calibrated dataset -> the scene: the rig's cameras and region empty (build.rig, exactly as Import
Rig makes them) plus its sparse points as one mesh object "<name> points" (vertices only, the point
colour attribute "Color"), in one collection.

The points are in the dataset's world, which is the rig's (transforms.json's) world, and Blender's
cameras sit in that same world (addon.camera_math.blender_matrix changes only the camera's axes), so
the points line up with the cameras as they are. A Geometry Nodes modifier shows each vertex as a small
sphere in its colour (Blender draws no loose vertices in Object Mode); the mesh itself stays vertices
only. Everything is read and checked before anything is made, and a failure removes what was made.
"""
import collections

import bpy
import numpy as np

from ...engine.io import ply
from ...engine.io import rig as rigs
from . import blocks
from . import mesh as meshes
from . import rig as rig_build

NODE_GROUP = "Marble Points"          # the Geometry Nodes group that shows the vertices as points
MATERIAL_NAME = "Marble Point Color"  # shades the points with their "Color" attribute
MODIFIER_NAME = "Marble Points"
RADIUS_FRACTION = 0.002               # point radius: this fraction of the points' extent (5th-95th percentile)

CalibratedBuild = collections.namedtuple("CalibratedBuild", "rig collection cameras region points warnings")


def read_points(path):
    """The sparse points of a PLY (vertices, and faces if any, ignored): (vertices (n, 3) float32,
    colours (n, 3) uint8 or None). Raises PlyError naming the file."""
    vertices, _, _, colours = ply.read_ply(path)
    return vertices, None if colours is None else colours[:, :3]


def point_radius(vertices):
    """A radius that keeps points apart at a glance: a small fraction of the cloud's robust extent."""
    if len(vertices) < 2:
        return 0.01
    low, high = np.percentile(vertices, [5.0, 95.0], axis=0)
    extent = float(np.linalg.norm(high - low))
    return RADIUS_FRACTION * extent if extent > 0.0 else 0.01


def build_points(name, vertices, colours, collection, created):
    """A mesh object `name` with the vertices only (world coordinates) and their colours as the point
    attribute "Color", linked into `collection`; shown as points by a Geometry Nodes modifier."""
    empty = np.zeros(0, dtype=np.int32)
    mesh = meshes.mesh_from_arrays(name, (np.asarray(vertices, dtype=np.float32), empty, empty, colours))
    created.append(mesh)
    obj = bpy.data.objects.new(name, mesh)
    created.append(obj)
    collection.objects.link(obj)
    modifier = obj.modifiers.new(MODIFIER_NAME, 'NODES')
    group = points_node_group()
    modifier.node_group = group
    radius = next(item for item in group.interface.items_tree
                  if getattr(item, "in_out", "") == 'INPUT' and item.name == "Radius")
    modifier[radius.identifier] = point_radius(vertices)
    return obj


def build_calibrated(transforms_path, points_path, name, scene, background_images=True):
    """Import a calibrated dataset: the rig of `transforms_path` (its collection called `name`) and the
    points of `points_path` in it. Returns a CalibratedBuild; raises RigError, PlyError (ValueErrors) or
    OSError with nothing added to the scene."""
    rig = rigs.load_rig(transforms_path)
    vertices, colours = read_points(points_path)  # before anything is made: a bad file changes nothing
    rig.name = name
    built = rig_build.build_rig(rig, scene, background_images=background_images)
    created = []
    try:
        points = build_points(f"{built.collection.name} points", vertices, colours, built.collection, created)
    except Exception:
        blocks.remove(created)
        remove_rig(built)
        raise
    return CalibratedBuild(rig, built.collection, built.cameras, built.region, points, built.warnings)


def remove_rig(built):
    """Remove what build_rig made (its cameras, region and collection)."""
    ids = [built.collection]  # removed last: blocks.remove goes newest first
    for obj in list(built.cameras) + ([built.region] if built.region is not None else []):
        ids += ([obj.data] if obj.data is not None else []) + [obj]
    blocks.remove(ids)


def points_material():
    """A material that shades points with their "Color" attribute (shared by all point clouds)."""
    def colour(nodes):
        node = nodes.new("ShaderNodeAttribute")
        node.attribute_type = 'GEOMETRY'
        node.attribute_name = meshes.COLOR_ATTRIBUTE
        return node
    return meshes.colour_material(MATERIAL_NAME, colour)


def points_node_group():
    """Geometry Nodes: the mesh's vertices as points of the group's Radius, with points_material()."""
    group = bpy.data.node_groups.get(NODE_GROUP)
    if group is not None and group.bl_idname == 'GeometryNodeTree':
        return group
    group = bpy.data.node_groups.new(NODE_GROUP, 'GeometryNodeTree')
    interface = group.interface
    interface.new_socket("Geometry", in_out='INPUT', socket_type='NodeSocketGeometry')
    radius = interface.new_socket("Radius", in_out='INPUT', socket_type='NodeSocketFloat')
    radius.default_value, radius.min_value = 0.01, 0.0
    interface.new_socket("Geometry", in_out='OUTPUT', socket_type='NodeSocketGeometry')
    nodes, links = group.nodes, group.links
    inputs, outputs = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    material = nodes.new("GeometryNodeSetMaterial")
    material.inputs["Material"].default_value = points_material()
    inputs.location, to_points.location, material.location, outputs.location = (-400, 0), (-200, 0), (0, 0), (200, 0)
    links.new(inputs.outputs["Geometry"], to_points.inputs["Mesh"])
    links.new(inputs.outputs["Radius"], to_points.inputs["Radius"])
    links.new(to_points.outputs["Points"], material.inputs["Geometry"])
    links.new(material.outputs["Geometry"], outputs.inputs["Geometry"])
    return group
