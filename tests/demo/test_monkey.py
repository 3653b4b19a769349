"""The embedded default subject (demo/monkey.py): Blender's monkey, closed and painted.

The truth must be Suzanne (close to bmesh's own monkey, mirror-symmetric, one closed surface), Cycles
must render exactly it (every pixel's ray cast against truth.ply decides the alpha), and the paint must
show where it says: dark pupils at the front of the fitted eye spheres, white around them, colourful
elsewhere.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

bpy = pytest.importorskip("bpy")
from PIL import Image  # noqa: E402

from demo import monkey  # noqa: E402
from engine.io.ply import read_triangles  # noqa: E402
from engine.io.rig import load_rig  # noqa: E402

VIEWS, SIZE, SAMPLES = 5, (96, 80), 4
KINDS = ("scenes", "objects", "meshes", "materials", "cameras", "lights", "worlds")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("monkey")
    before = {kind: set(getattr(bpy.data, kind).keys()) for kind in KINDS}
    result = monkey.render_monkey_dataset(str(out), views=VIEWS, size=SIZE, samples=SAMPLES)
    assert {kind: set(getattr(bpy.data, kind).keys()) for kind in KINDS} == before, \
        "render_monkey_dataset left Blender data behind"
    return result


def suzanne():
    """bmesh's monkey: vertices, triangles (fan-split faces) and edges."""
    import bmesh
    bm = bmesh.new()
    try:
        bmesh.ops.create_monkey(bm)
        vertices = np.array([v.co[:] for v in bm.verts])
        triangles = np.array([[f.verts[0].index, f.verts[k].index, f.verts[k + 1].index]
                              for f in bm.faces for k in range(1, len(f.verts) - 1)])
        edges = np.array([[e.verts[0].index, e.verts[1].index] for e in bm.edges])
    finally:
        bm.free()
    return vertices, triangles, edges


def test_numpy_helpers():
    labels = monkey.connected_components(6, [[0, 1], [4, 5], [1, 2]])
    assert labels.tolist() == [0, 0, 0, 1, 2, 2]
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(50, 3))
    points = (1.0, -2.0, 0.5) + 0.7 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    centre, radius = monkey.fit_sphere(points)
    np.testing.assert_allclose(centre, (1.0, -2.0, 0.5), atol=1e-9)
    assert radius == pytest.approx(0.7, abs=1e-9)
    eyes = [(np.array([-1.0, 0.0, 0.0]), 0.5), (np.array([1.0, 0.0, 0.0]), 0.5)]
    kinds = monkey.paint([[-1.0, -0.5, 0.0], [1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [1.0, 0.2, -0.48]], eyes)
    assert kinds.tolist() == [2, 1, 0, 1]  # pupil at the front (-y), whites around, head elsewhere


def test_eyes_of_suzanne():
    vertices, _, edges = suzanne()
    (left, r_left), (right, r_right) = monkey.eye_spheres(vertices, edges)
    # Mirror images of each other, in front of the face (Suzanne looks down -Y), above the middle.
    np.testing.assert_allclose(left * (-1, 1, 1), right, atol=1e-9)
    assert r_left == pytest.approx(r_right) and 0.2 < r_left < 0.35
    assert left[0] < -0.2 and right[1] < -0.4 and right[2] > 0.1
    labels = monkey.connected_components(len(vertices), edges)
    firsts = [int(np.argmax(labels == k)) for k in range(labels.max() + 1)]
    assert len(firsts) == 3
    with pytest.raises(ValueError, match="head and two eyes"):  # an eye joined to the head
        monkey.eye_spheres(vertices, np.concatenate([edges, [[firsts[0], firsts[1]]]]))


def test_truth_is_a_closed_smooth_suzanne(dataset):
    trimesh = pytest.importorskip("trimesh")
    from engine.metrics import sample_surface, surface_distances

    vertices, faces, _ = read_triangles(dataset["truth"])
    np.testing.assert_allclose(dataset["vertices"], vertices, atol=1e-6)
    mesh = trimesh.Trimesh(vertices, faces, process=True)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert len(mesh.split(only_watertight=False)) == 1  # the eyes are fused into the head
    np.testing.assert_allclose(vertices.max(0), -vertices.min(0), atol=1e-6)
    assert dataset["bbox_diagonal"] == pytest.approx(1.7, abs=1e-6)
    # Suzanne's own mesh, taken to the world by the recorded matrix, lies on the smoothed surface.
    info = json.loads(open(dataset["scene"]).read())
    raw, triangles, _ = suzanne()
    to_world = np.array(info["suzanne_to_world"])
    placed = raw @ to_world[:3, :3].T + to_world[:3, 3]
    truth_to_suzanne = surface_distances(sample_surface(vertices, faces, 20000), placed, triangles)
    suzanne_to_truth = surface_distances(placed, vertices, faces)
    assert np.median(truth_to_suzanne) < 0.012 and np.percentile(truth_to_suzanne, 99) < 0.04
    assert np.median(suzanne_to_truth) < 0.015
    # Symmetric about x = 0.
    mirrored = surface_distances(sample_surface(vertices * (-1, 1, 1), faces, 4000), vertices, faces)
    assert mirrored.max() < 0.005
    # The eyes as recorded: Suzanne's eye spheres, moved like the rest.
    _, _, edges = suzanne()
    for (centre, radius), recorded in zip(monkey.eye_spheres(placed, edges), info["eyes"]):
        np.testing.assert_allclose(recorded["center"], centre, atol=1e-9)
        assert recorded["radius"] == pytest.approx(radius)


def ray_cast(view, vertices, faces):
    """Per pixel-centre ray of `view`: (hit mask, hit points) against the mesh (Blender's BVH)."""
    from mathutils import Vector
    from mathutils.bvhtree import BVHTree

    tree = BVHTree.FromPolygons(vertices.tolist(), faces.tolist())
    origin = Vector(view.c2w[:3, 3].tolist())
    hits = np.zeros((view.height, view.width), dtype=bool)
    points = np.zeros((view.height, view.width, 3))
    for v in range(view.height):
        for u in range(view.width):
            d = np.array([(u + 0.5 - view.K[0, 2]) / view.K[0, 0], (v + 0.5 - view.K[1, 2]) / view.K[1, 1], 1.0])
            location = tree.ray_cast(origin, Vector((view.c2w[:3, :3] @ d).tolist()))[0]
            if location is not None:
                hits[v, u], points[v, u] = True, location
    return hits, points


def test_images_show_the_truth_and_its_paint(dataset):
    rig = load_rig(dataset["transforms"])
    assert len(rig.views) == VIEWS
    eyes = dataset["eyes"]
    seen = {0: 0, 1: 0, 2: 0}
    for view in rig.views:
        rgba = np.asarray(Image.open(view.image_path)).astype(int)
        assert rgba.shape == (SIZE[1], SIZE[0], 4)
        hits, points = ray_cast(view, dataset["vertices"], dataset["faces"])
        # Every ray that hits the truth with all its neighbours is opaque; one with no neighbour
        # hitting is empty: K, the poses and the rendered surface agree to a pixel.
        padded = np.pad(hits, 1)
        neighbours = sum(np.roll(np.roll(padded, dy, 0), dx, 1)[1:-1, 1:-1]
                         for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        alpha = rgba[..., 3]
        assert (alpha[neighbours == 9] == 255).mean() > 0.99
        assert (alpha[neighbours == 0] == 0).all()
        # The paint where the rays land (inner pixels only, away from the paint's own borders).
        kinds = monkey.paint(points.reshape(-1, 3), eyes).reshape(hits.shape)
        inner = neighbours == 9
        for kind in (0, 1, 2):
            same = inner & (sum(np.roll(np.roll(kinds == kind, dy, 0), dx, 1)
                                for dy in (-1, 0, 1) for dx in (-1, 0, 1)) == 9)
            colours = rgba[..., :3][same]
            seen[kind] += len(colours)
            if kind == 2 and len(colours):
                assert colours.mean() < 60, "pupils are dark"
            if kind == 1 and len(colours):
                assert colours.min(1).mean() > 150 and np.ptp(colours, 1).mean() < 40, "whites are white"
            if kind == 0:
                assert colours.std(0).mean() > 20.0, "the head is colourful"
    assert seen[0] > 500 and seen[1] > 0 and seen[2] > 0


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "demo.monkey", str(out), "--views", "2", "--size", "40", "24",
                             "--samples", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Saved:" not in result.stdout
    data = json.loads((out / "transforms.json").read_text())
    assert (data["w"], data["h"], len(data["frames"])) == (40, 24, 2)
    info = json.loads((out / "scene.json").read_text())
    assert info["subject"] == "monkey" and info["views"] == 2 and len(info["eyes"]) == 2
    assert (out / "truth.ply").is_file() and Image.open(out / "images" / "001.png").size == (40, 24)
