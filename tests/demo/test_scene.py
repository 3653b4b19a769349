"""The embedded default scene (demo/scene.py): what Cycles renders matches the rig and the truth.

Every pixel's ray is traced against the torus' exact signed distance function: rays that hit it must
be opaque in the image's alpha, rays that miss it by a margin must be transparent. That checks K, the
camera-to-world matrices, the pixel-centre convention and the mask in one go.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO


bpy = pytest.importorskip("bpy")
from PIL import Image  # noqa: E402

from demo import scene as demo_scene  # noqa: E402
from engine.io.ply import read_triangles  # noqa: E402
from engine.io.rig import load_rig  # noqa: E402

R, r = demo_scene.MAJOR_RADIUS, demo_scene.MINOR_RADIUS


def torus_sdf(points):
    q = np.stack([np.linalg.norm(points[..., :2], axis=-1) - R, points[..., 2]], axis=-1)
    return np.linalg.norm(q, axis=-1) - r


def ray_min_sdf(view, step=0.01):
    """Smallest torus SDF along each pixel-centre ray of `view` (height x width)."""
    u, v = np.meshgrid(np.arange(view.width) + 0.5, np.arange(view.height) + 0.5)
    K, c2w = view.K, view.c2w
    directions = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)
    directions = directions @ c2w[:3, :3].T
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    origin = c2w[:3, 3]
    distance = np.linalg.norm(origin)
    best = np.full(u.shape, np.inf)
    for t in np.arange(distance - 1.0, distance + 1.0, step):
        best = np.minimum(best, torus_sdf(origin + t * directions))
    return best


def project(view, points):
    w2c = np.linalg.inv(view.c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    assert (cam[:, 2] > 0).all()
    pix = cam @ view.K.T
    return pix[:, :2] / pix[:, 2:]


@pytest.fixture(scope="module", params=[(6, (64, 64)), (4, (80, 48))], ids=["square", "wide"])
def dataset(request, tmp_path_factory):
    views, size = request.param
    out = tmp_path_factory.mktemp("torus")
    scenes_before = set(bpy.data.scenes.keys())
    result = demo_scene.render_dataset(str(out), views=views, size=size, samples=8)
    assert set(bpy.data.scenes.keys()) == scenes_before, "render_dataset left its scene behind"
    return views, size, result


def test_rig_and_images(dataset):
    views, (width, height), result = dataset
    rig = load_rig(result["transforms"])
    assert len(rig.views) == views
    assert sorted(os.listdir(os.path.join(os.path.dirname(result["transforms"]), "images"))) == \
        [f"{k:03d}.png" for k in range(views)]
    centres = []
    for view in rig.views:
        assert (view.width, view.height) == (width, height)
        image = Image.open(view.image_path)
        assert image.mode == "RGBA" and image.size == (width, height)
        # Cameras at distance 3 looking at the origin, fx == fy from the lens.
        np.testing.assert_allclose(np.linalg.norm(view.center), demo_scene.CAMERA_DISTANCE, atol=1e-5)
        forward = view.c2w[:3, 2]
        np.testing.assert_allclose(forward, -view.center / np.linalg.norm(view.center), atol=1e-5)
        assert view.K[0, 0] == pytest.approx(view.K[1, 1])
        assert view.K[0, 0] == pytest.approx(demo_scene.LENS_MM / demo_scene.SENSOR_MM * min(width, height))
        centres.append(view.center)
    elevations = np.degrees(np.arcsin(np.array(centres)[:, 2] / demo_scene.CAMERA_DISTANCE))
    assert elevations.min() >= -40.0 - 1e-6 and elevations.max() <= 80.0 + 1e-6
    assert elevations.max() - elevations.min() > 40.0


def test_alpha_is_the_torus_silhouette(dataset):
    _, _, result = dataset
    rig = load_rig(result["transforms"])
    angles = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
    ring = np.stack([R * np.cos(angles), R * np.sin(angles), np.zeros_like(angles)], axis=-1)
    for view in rig.views:
        rgba = np.asarray(Image.open(view.image_path))
        alpha = rgba[..., 3]
        # The tube's centre line always projects inside the silhouette.
        uv = project(view, ring)
        inside = (uv >= 0).all(axis=1) & (uv[:, 0] < view.width) & (uv[:, 1] < view.height)
        assert inside.all(), "the torus leaves the frame"
        assert (alpha[uv[:, 1].astype(int), uv[:, 0].astype(int)] > 0).all()
        # Every pixel: rays that hit the torus are opaque, rays that miss it by ~2 px are empty.
        min_sdf = ray_min_sdf(view)
        pixel_size = demo_scene.CAMERA_DISTANCE / view.K[0, 0]
        hit, miss = min_sdf < -pixel_size, min_sdf > 2.5 * pixel_size
        assert hit.sum() > 0.05 * alpha.size
        assert (alpha[hit] == 255).mean() > 0.99 and (alpha[hit] > 0).all()
        assert (alpha[miss] == 0).all()
        # Colourful: the visible surface is far from one flat colour.
        colours = rgba[..., :3][alpha == 255].astype(float)
        assert colours.std(axis=0).mean() > 20.0


def test_truth_mesh(dataset):
    trimesh = pytest.importorskip("trimesh")
    _, _, result = dataset
    mesh = trimesh.load(result["truth"], process=False)
    n = demo_scene.MAJOR_SEGMENTS * demo_scene.MINOR_SEGMENTS
    assert len(mesh.vertices) == n and len(mesh.faces) == 2 * n
    np.testing.assert_allclose(mesh.bounds, [[-R - r, -R - r, -r], [R + r, R + r, r]], atol=1e-5)
    assert result["bbox_diagonal"] == pytest.approx(np.linalg.norm([2 * (R + r), 2 * (R + r), 2 * r]), abs=1e-5)
    assert np.abs(torus_sdf(np.asarray(mesh.vertices))).max() < 1e-5
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward-facing triangles
    vertices, faces, _ = read_triangles(result["truth"])
    np.testing.assert_allclose(vertices, mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(faces, mesh.faces)
    np.testing.assert_allclose(result["vertices"], vertices, atol=1e-6)


@pytest.mark.parametrize("fit", ["AUTO", "HORIZONTAL", "VERTICAL"])
@pytest.mark.parametrize("size", [(90, 50), (40, 70)])
def test_camera_intrinsics_match_blender(fit, size):
    """K from camera_intrinsics projects like Blender's own camera (with lens shift)."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Matrix, Vector

    scene = bpy.data.scenes.new("marble_test_intrinsics")
    try:
        scene.render.resolution_x, scene.render.resolution_y = size
        scene.render.resolution_percentage = 100
        data = bpy.data.cameras.new("marble_test_intrinsics")
        data.lens, data.sensor_width, data.sensor_height, data.sensor_fit = 35.0, 30.0, 20.0, fit
        data.shift_x, data.shift_y = 0.12, -0.07
        camera = bpy.data.objects.new("marble_test_intrinsics", data)
        scene.collection.objects.link(camera)
        gl = demo_scene.look_at((2.0, -1.5, 1.0), (0.1, 0.2, 0.0))
        camera.matrix_world = Matrix(gl.tolist())
        K = demo_scene.camera_intrinsics(data, *size)
        c2w = gl @ np.diag([1.0, -1.0, -1.0, 1.0])
        w2c = np.linalg.inv(c2w)
        points = np.random.default_rng(0).uniform(-0.5, 0.5, (50, 3))
        for p in points:
            ndc = world_to_camera_view(scene, camera, Vector(p))
            blender = np.array([ndc.x * size[0], (1.0 - ndc.y) * size[1]])
            cam = w2c[:3, :3] @ p + w2c[:3, 3]
            ours = (K @ cam)[:2] / cam[2]
            np.testing.assert_allclose(ours, blender, atol=0.01)
    finally:
        for block in (bpy.data.objects, bpy.data.cameras):
            if "marble_test_intrinsics" in block:
                block.remove(block["marble_test_intrinsics"])
        bpy.data.scenes.remove(scene)


def test_geometry_helpers():
    vertices, quads = demo_scene.torus_mesh(major_segments=8, minor_segments=6)
    assert vertices.shape == (48, 3) and quads.shape == (48, 4)
    assert np.abs(torus_sdf(vertices)).max() < 1e-12
    positions = demo_scene.camera_positions(40)
    np.testing.assert_allclose(np.linalg.norm(positions, axis=1), 3.0)
    # Spread over all azimuths, not clumped.
    azimuth = np.sort(np.arctan2(positions[:, 1], positions[:, 0]))
    assert np.diff(np.concatenate([azimuth, azimuth[:1] + 2 * np.pi])).max() < np.radians(40)
    gl = demo_scene.look_at((1.0, 2.0, 0.5))
    np.testing.assert_allclose(gl[:3, :3] @ gl[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(-gl[:3, 2], -np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5]))


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "demo.scene", str(out), "--views", "2", "--size", "40", "24",
                             "--samples", "2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Saved:" not in result.stdout  # Blender's per-render chatter is silenced
    data = json.loads((out / "transforms.json").read_text())
    assert (data["w"], data["h"], len(data["frames"])) == (40, 24, 2)
    assert (out / "truth.ply").is_file()
    assert Image.open(out / "images" / "001.png").size == (40, 24)


# ---------------------------------------------------------------------------------------------------
# Mesh scenes (render_mesh_dataset): any OBJ, scaled and centred, rendered like the torus.

OCTAHEDRON_OBJ = """# an elongated octahedron, Y up, away from the origin; quads and a negative index on purpose
v 3 1 5
v 5 1 5
v 4 0 5
v 4 4 5
v 4 1 4
v 4 1 6
f 1 3 5
f 3 2 5
f 2 4 5
f 4 1 5
f 3 1 6
f 2 3 6
f 4 2 6
f 1 4 -1
"""


def test_normalising_matrix():
    vertices = np.array([[1.0, 2.0, 3.0], [4.0, 6.0, 3.0], [2.0, 2.0, 15.0]])
    M = demo_scene.normalising_matrix(vertices, diagonal=1.7)
    moved = vertices @ M[:3, :3].T + M[:3, 3]
    np.testing.assert_allclose(moved.max(0), -moved.min(0), atol=1e-12)
    assert np.linalg.norm(moved.max(0) - moved.min(0)) == pytest.approx(1.7)
    with pytest.raises(ValueError):
        demo_scene.normalising_matrix(np.ones((3, 3)))


def test_full_sphere_cameras():
    positions = demo_scene.camera_positions(64, elevation_range_deg=demo_scene.MESH_ELEVATION_RANGE_DEG)
    elevations = np.degrees(np.arcsin(positions[:, 2] / demo_scene.CAMERA_DISTANCE))
    assert elevations.min() < -75.0 and elevations.max() > 75.0
    # Equal area: as many cameras below the equator as above.
    assert (positions[:, 2] < 0).sum() == (positions[:, 2] > 0).sum() == 32


def test_mesh_dataset(tmp_path):
    obj = tmp_path / "octahedron.obj"
    obj.write_text(OCTAHEDRON_OBJ)
    scenes_before = set(bpy.data.scenes.keys())
    blocks_before = {kind: len(getattr(bpy.data, kind)) for kind in ("objects", "meshes", "materials")}
    result = demo_scene.render_mesh_dataset(str(obj), str(tmp_path / "data"), views=5, size=(40, 32), samples=2)
    assert set(bpy.data.scenes.keys()) == scenes_before, "render_mesh_dataset left its scene behind"
    assert {kind: len(getattr(bpy.data, kind)) for kind in blocks_before} == blocks_before
    # Y up in the file becomes Z up; the bounding box is centred with a diagonal of 1.7.
    vertices, faces, _ = read_triangles(result["truth"])
    assert faces.shape == (8, 3)
    extent = vertices.max(0) - vertices.min(0)
    np.testing.assert_allclose(vertices.max(0), -vertices.min(0), atol=1e-6)
    assert np.linalg.norm(extent) == pytest.approx(1.7, abs=1e-6)
    assert extent[2] == pytest.approx(2.0 * extent[0], abs=1e-6)  # file's y (4 long) is now z
    file_vertices = np.array([list(map(float, l.split()[1:])) for l in OCTAHEDRON_OBJ.splitlines()
                              if l.startswith("v ")])
    M = result["obj_to_world"]
    np.testing.assert_allclose(file_vertices @ M[:3, :3].T + M[:3, 3], vertices, atol=1e-6)
    info = json.loads(open(result["scene"]).read())
    assert info["source"] == str(obj) and info["views"] == 5 and info["size"] == [40, 32]
    rig = load_rig(result["transforms"])
    assert len(rig.views) == 5
    for view in rig.views:
        rgba = np.asarray(Image.open(view.image_path))
        assert rgba.shape == (32, 40, 4)
        # The centre of the object (the origin) projects into its silhouette.
        u, v = project(view, np.zeros((1, 3)))[0]
        assert rgba[int(v), int(u), 3] > 0


def test_mesh_command_line(tmp_path):
    obj = tmp_path / "octahedron.obj"
    obj.write_text(OCTAHEDRON_OBJ)
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "demo.scene", str(out), "--mesh", str(obj), "--views", "3",
                             "--size", "24", "--samples", "1"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Saved:" not in result.stdout and "OBJ import" not in result.stdout
    data = json.loads((out / "transforms.json").read_text())
    assert (data["w"], data["h"], len(data["frames"])) == (24, 24, 3)
    assert json.loads((out / "scene.json").read_text())["obj_to_world"]
    missing = subprocess.run([sys.executable, "-m", "demo.scene", str(out), "--mesh", str(tmp_path / "no.obj")],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no such file" in missing.stderr
