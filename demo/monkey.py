"""The embedded default subject: Blender's monkey (Suzanne), smooth and closed, painted by position.

Runs under the bpy module, with build.py's .venv interpreter:

    python -m demo.monkey OUT_DIR [--views 40] [--size 160] [--samples 16]

writes what `python -m demo.scene` writes for the torus (OUT_DIR/images/NNN.png RGBA, transforms.json,
truth.ply) plus OUT_DIR/scene.json (the subject, its eyes, the build parameters).

The surface. Suzanne (bmesh.ops.create_monkey, the mesh of Add > Mesh > Monkey) is an open head with
two separate eye domes sitting in its sockets. Two levels of subdivision smooth it, a voxel remesh
(VOXEL_SIZE) fuses the eyes into the head and closes it, and the result is scaled and centred (bounding
box at the origin, diagonal 1.7, like the OBJ scenes; facing -Y, up +Z). That closed surface is both
what Cycles renders (a plain mesh, no modifiers left) and truth.ply, so the Chamfer distance compares
the reconstruction with exactly the triangles the cameras saw: no hidden eye backs or socket holes.

The paint (by object-space position, so the mesh needs no UVs): a checker whose two colours change hue
with height, white eyes (points near the spheres fitted to Suzanne's eye domes) and dark pupils (near
the front of each dome). Diffuse, lit like the torus, cameras on the torus' spiral.
"""
import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from demo.geometry import ELEVATION_RANGE_DEG, MESH_DIAGONAL, normalising_matrix  # noqa: E402

SUBDIVISIONS = 2
VOXEL_SIZE = 0.01            # of the remesh, in world units (the bounding-box diagonal is 1.7)
EYE_MARGIN = 0.08            # the whites reach this far (times the eye radius) beyond the fitted sphere
PUPIL_RADIUS = 0.55          # times the eye radius, around the front of each dome
PUPIL_COLOUR = (0.01, 0.012, 0.03)
WHITE_COLOUR = (0.92, 0.92, 0.90)
CHECKER_SCALE = 5.0
HUE_OFFSET, HUE_PER_X, HUE_PER_Z = 0.08, 0.3, 0.9    # hue = offset + x * per_x + z * per_z, wrapped
VIEWS, SIZE = 40, 160
SCENE_FILE = "scene.json"


# ---------------------------------------------------------------------------------------------------
# numpy: Suzanne's parts and eyes

def connected_components(count, edges):
    """Component label (0..K-1, by first vertex) of each of `count` vertices joined by `edges` (E, 2)."""
    parent = np.arange(count)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in np.asarray(edges, dtype=np.int64).reshape(-1, 2):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(count)])
    _, labels = np.unique(roots, return_inverse=True)
    return labels


def fit_sphere(points):
    """Least-squares sphere through `points` (N >= 4, 3): (centre (3,), radius)."""
    points = np.asarray(points, dtype=np.float64)
    A = np.column_stack([2.0 * points, np.ones(len(points))])
    solution = np.linalg.lstsq(A, (points ** 2).sum(1), rcond=None)[0]
    centre = solution[:3]
    return centre, float(np.sqrt(solution[3] + centre @ centre))


def eye_spheres(vertices, edges):
    """Suzanne's two eyes (its two smallest parts) as spheres, left (-x) then right: [(centre, r)]."""
    labels = connected_components(len(vertices), edges)
    sizes = np.bincount(labels)
    if len(sizes) < 3:
        raise ValueError(f"expected a head and two eyes, found {len(sizes)} part(s)")
    eyes = [fit_sphere(vertices[labels == k]) for k in np.argsort(sizes)[:2]]
    return sorted(eyes, key=lambda eye: eye[0][0])


def paint(points, eyes, front=(0.0, -1.0, 0.0)):
    """Which paint each point gets, as the material computes it: 0 head, 1 eye white, 2 pupil."""
    points = np.asarray(points, dtype=np.float64)
    kind = np.zeros(len(points), dtype=np.int64)
    for centre, radius in eyes:
        kind[np.linalg.norm(points - centre, axis=1) < radius * (1.0 + EYE_MARGIN)] = 1
    for centre, radius in eyes:
        pupil = centre + radius * np.asarray(front)
        kind[np.linalg.norm(points - pupil, axis=1) < radius * PUPIL_RADIUS] = 2
    return kind


# ---------------------------------------------------------------------------------------------------
# Blender

def monkey_surface(bpy, scene):
    """The closed, smooth Suzanne in world coordinates and its eyes there:
    (vertices (N, 3), triangles (M, 3), eyes [(centre, radius)] x 2, head-only Suzanne's 4x4 to world).

    The subdivided and remeshed object is linked into `scene` only to evaluate it, then removed."""
    import bmesh
    from mathutils import Matrix

    from demo.scene import evaluated_triangles

    bm = bmesh.new()
    try:
        bmesh.ops.create_monkey(bm)
        raw = np.array([v.co[:] for v in bm.verts], dtype=np.float64)
        edges = np.array([[e.verts[0].index, e.verts[1].index] for e in bm.edges], dtype=np.int64)
        # Remesh at about VOXEL_SIZE of the final size: scale Suzanne to it first.
        rough = normalising_matrix(raw, MESH_DIAGONAL)
        bmesh.ops.transform(bm, matrix=Matrix(rough.tolist()), verts=bm.verts)
        mesh = bpy.data.meshes.new("marble_demo_monkey_source")
        bm.to_mesh(mesh)
    finally:
        bm.free()
    obj = bpy.data.objects.new("marble_demo_monkey_source", mesh)
    try:
        scene.collection.objects.link(obj)
        subsurf = obj.modifiers.new("subdivision", "SUBSURF")
        subsurf.levels = subsurf.render_levels = SUBDIVISIONS
        remesh = obj.modifiers.new("remesh", "REMESH")
        remesh.mode, remesh.voxel_size, remesh.adaptivity = "VOXEL", VOXEL_SIZE, 0.0
        vertices, triangles = evaluated_triangles(scene, obj)
    finally:
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)
    final = normalising_matrix(vertices, MESH_DIAGONAL)
    vertices = vertices @ final[:3, :3].T + final[:3, 3]
    to_world = final @ rough
    scale = to_world[0, 0]
    eyes = [(centre @ to_world[:3, :3].T + to_world[:3, 3], radius * scale)
            for centre, radius in eye_spheres(raw, edges)]
    return vertices, triangles, eyes, to_world


def _node_input(node, identifier):
    return next(s for s in node.inputs if s.identifier == identifier)


def _mix(nodes, links, factor, a, b):
    """A colour mix node (ShaderNodeMix, RGBA): a where factor is 0, b where it is 1."""
    mix = nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    links.new(factor, _node_input(mix, "Factor_Float"))
    for identifier, value in (("A_Color", a), ("B_Color", b)):
        if isinstance(value, tuple):
            _node_input(mix, identifier).default_value = (*value, 1.0)
        else:
            links.new(value, _node_input(mix, identifier))
    return next(s for s in mix.outputs if s.identifier == "Result_Color")


def _near(nodes, links, position, centre, radius):
    """1.0 where `position` lies within `radius` of `centre`, else 0.0 (node sockets)."""
    distance = nodes.new("ShaderNodeVectorMath")
    distance.operation = "DISTANCE"
    links.new(position, distance.inputs[0])
    distance.inputs[1].default_value = tuple(float(c) for c in centre)
    less = nodes.new("ShaderNodeMath")
    less.operation = "LESS_THAN"
    links.new(distance.outputs["Value"], less.inputs[0])
    less.inputs[1].default_value = float(radius)
    return less.outputs["Value"]


def _either(nodes, links, a, b):
    maximum = nodes.new("ShaderNodeMath")
    maximum.operation = "MAXIMUM"
    links.new(a, maximum.inputs[0])
    links.new(b, maximum.inputs[1])
    return maximum.outputs["Value"]


def monkey_material(bpy, eyes, name="marble_demo_monkey"):
    """The monkey's paint (see paint()): a checker of light and dark squares whose hue changes with
    position, white eyes, dark pupils; diffuse."""
    from demo.scene import new_material

    material, nodes, links = new_material(bpy, name)
    position = nodes.new("ShaderNodeTexCoord").outputs["Object"]
    xyz = nodes.new("ShaderNodeSeparateXYZ")
    links.new(position, xyz.inputs[0])
    # Hue changes with height and across (orange chin, green cheeks, blue and violet crown); the checker
    # only darkens every other square, so a blurred copy keeps the hues.
    across = nodes.new("ShaderNodeMath")
    across.operation = "MULTIPLY_ADD"
    links.new(xyz.outputs["X"], across.inputs[0])
    across.inputs[1].default_value, across.inputs[2].default_value = HUE_PER_X, HUE_OFFSET
    height = nodes.new("ShaderNodeMath")
    height.operation = "MULTIPLY_ADD"
    links.new(xyz.outputs["Z"], height.inputs[0])
    height.inputs[1].default_value = HUE_PER_Z
    links.new(across.outputs["Value"], height.inputs[2])
    hue = nodes.new("ShaderNodeMath")
    hue.operation = "WRAP"
    links.new(height.outputs["Value"], hue.inputs[0])
    hue.inputs[1].default_value, hue.inputs[2].default_value = 1.0, 0.0
    colours = []
    for saturation, value in ((0.7, 0.88), (0.8, 0.62)):
        combine = nodes.new("ShaderNodeCombineColor")
        combine.mode = "HSV"
        links.new(hue.outputs["Value"], combine.inputs[0])
        combine.inputs[1].default_value, combine.inputs[2].default_value = saturation, value
        colours.append(combine.outputs["Color"])
    checker = nodes.new("ShaderNodeTexChecker")
    checker.inputs["Scale"].default_value = CHECKER_SCALE
    links.new(position, checker.inputs["Vector"])
    links.new(colours[0], checker.inputs["Color1"])
    links.new(colours[1], checker.inputs["Color2"])
    whites = [_near(nodes, links, position, c, r * (1.0 + EYE_MARGIN)) for c, r in eyes]
    pupils = [_near(nodes, links, position, c + r * np.array([0.0, -1.0, 0.0]), r * PUPIL_RADIUS)
              for c, r in eyes]
    colour = _mix(nodes, links, _either(nodes, links, *whites), checker.outputs["Color"], WHITE_COLOUR)
    colour = _mix(nodes, links, _either(nodes, links, *pupils), colour, PUPIL_COLOUR)
    diffuse = nodes.new("ShaderNodeBsdfDiffuse")
    diffuse.inputs["Roughness"].default_value = 0.0
    links.new(colour, diffuse.inputs["Color"])
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(diffuse.outputs["BSDF"], output.inputs["Surface"])
    return material


def monkey_subject(bpy, scene):
    """A subject builder for demo.scene (like torus_subject): the closed, painted Suzanne."""
    vertices, triangles, eyes, to_world = monkey_surface(bpy, scene)
    mesh = bpy.data.meshes.new("marble_demo_monkey")
    mesh.from_pydata(vertices.tolist(), [], triangles.tolist())
    mesh.update()
    mesh.polygons.foreach_set("use_smooth", np.ones(len(triangles), dtype=bool))
    mesh.materials.append(monkey_material(bpy, eyes))
    obj = bpy.data.objects.new("monkey", mesh)
    scene.collection.objects.link(obj)
    info = {"subject": "monkey", "diagonal": MESH_DIAGONAL, "subdivisions": SUBDIVISIONS,
            "voxel_size": VOXEL_SIZE, "suzanne_to_world": to_world.tolist(),
            "eyes": [{"center": c.tolist(), "radius": r} for c, r in eyes],
            "eye_margin": EYE_MARGIN, "pupil_radius": PUPIL_RADIUS}
    return obj, [mesh, mesh.materials[0], obj], info


def render_monkey_dataset(out_dir, views=VIEWS, size=SIZE, samples=16, keep_scene=False, verbose=False,
                          verbose_blender=False):
    """Render the monkey dataset into `out_dir`: images/, transforms.json, truth.ply and scene.json.

    Returns demo.scene.render_dataset's dict plus `eyes` [(centre, radius)] and `scene` (its path)."""
    from demo.scene import render_subject

    result = render_subject(monkey_subject, out_dir, views, size, samples, ELEVATION_RANGE_DEG,
                            keep_scene=keep_scene, verbose=verbose, verbose_blender=verbose_blender)
    info = result.pop("info")
    width, height = result.pop("size")
    info.update(views=views, size=[width, height], samples=samples,
                elevation_range_deg=list(ELEVATION_RANGE_DEG),
                vertices=len(result["vertices"]), triangles=len(result["faces"]))
    path = os.path.join(os.path.abspath(out_dir), SCENE_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    result.update(eyes=[(np.array(e["center"]), e["radius"]) for e in info["eyes"]], scene=path)
    return result


def main(argv=None):
    from demo.scene import report

    parser = argparse.ArgumentParser(prog="python -m demo.monkey", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write images/, transforms.json, truth.ply and scene.json into")
    parser.add_argument("--views", type=int, default=VIEWS, help=f"number of cameras (default {VIEWS})")
    parser.add_argument("--size", type=int, nargs="+", metavar="PX", default=[SIZE],
                        help=f"image size: one number (square) or width height (default {SIZE})")
    parser.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel (default 16)")
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2):
        parser.error("--size takes one number or two (width height)")
    size = (args.size[0], args.size[-1])
    result = render_monkey_dataset(args.out_dir, views=args.views, size=size, samples=args.samples, verbose=True)
    report("monkey", f"{args.views} views at {size[0]}x{size[1]}, {args.samples} samples", result, [
        ("rig:  ", result["transforms"]),
        ("truth:", f"{result['truth']} ({len(result['vertices'])} vertices, {len(result['faces'])} triangles, "
                   f"bbox diagonal {result['bbox_diagonal']:.4f})")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
