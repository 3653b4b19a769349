"""engine.export without a trained job: decimation, unwrap + rasterise + bake + dilate against known
colour fields on known shapes, the glTF / OBJ / PLY writers read back (axes included), atomic writes
and cancel. The CLI and trained jobs: test_export_jobs.py."""
import io
import os

import numpy as np
import pytest
import trimesh
from PIL import Image

from engine.export import bake as baking
from engine.export.decimate import decimate, vertex_normals
from engine.export.gltf import read_glb, y_up, z_up
from engine.export.obj import read_obj
from engine.export.run import ExportCancelled, ExportOptions, Progress, export_mesh
from engine.io.ply import read_triangles

CENTER = np.array([1.0, 2.0, 3.0])  # off the origin, so a wrong axis mapping shows


def sphere(subdivisions=4, radius=1.0):
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(mesh.vertices) + CENTER, np.asarray(mesh.faces, dtype=np.int64)


def field(points, normals=None):
    """A smooth known colour field over world space, inside 0.1-0.9."""
    p = np.asarray(points) - CENTER
    return 0.5 + 0.4 * np.sin(np.stack([2.0 * p[:, 0] + p[:, 2], 2.0 * p[:, 1], 1.5 * p[:, 2] - p[:, 0]], 1))


class Events:
    def __init__(self):
        self.events = []

    def emit(self, kind, **fields):
        self.events.append(dict(fields, event=kind))


def run_export(folder, fmt, faces=2000, texture=256, check=lambda: None, mesh=None, events=None):
    os.makedirs(str(folder), exist_ok=True)
    vertices, triangles = mesh if mesh is not None else sphere()
    phases = ("decimate", "bake", "write") if fmt == "ply" else ("decimate", "unwrap", "bake", "write")
    return export_mesh(vertices, triangles, field, ExportOptions(faces=faces, texture=texture, format=fmt),
                       os.path.join(str(folder), "mesh_textured"), Progress(events or Events(), phases), check)


def test_decimation_reaches_the_face_count_and_keeps_the_sphere():
    vertices, faces = sphere(subdivisions=5)                     # 20,480 faces
    small, small_faces = decimate(vertices, faces, 2000)
    assert abs(len(small_faces) - 2000) <= 200
    radius = np.linalg.norm(small - CENTER, axis=1)
    assert np.abs(radius - 1.0).max() < 0.01                     # vertices stay on the surface
    # Points spread over the decimated surface lie on the sphere (its facets sag by well under 1%),
    # and the decimated mesh reaches every part of it (both directions of a Chamfer distance).
    from scipy.spatial import cKDTree
    weights = np.random.default_rng(1).dirichlet(np.ones(3), size=len(small_faces))
    on_small = np.einsum("fk,fkd->fd", weights, small[small_faces])
    assert np.abs(np.linalg.norm(on_small - CENTER, axis=1) - 1.0).mean() < 0.005
    reach = cKDTree(on_small).query(vertices)[0]  # one point per face, about 0.12 apart
    assert reach.mean() < 0.04 and reach.max() < 0.15
    normals = vertex_normals(small, small_faces)
    assert (np.einsum("ij,ij->i", normals, (small - CENTER) / radius[:, None]) > 0.99).all()  # outward, unit
    same, same_faces = decimate(vertices, faces, 10 ** 6)        # above the count: as it is
    assert len(same_faces) == len(faces) and np.allclose(same, vertices)


def test_rasterise_covers_a_triangle_with_exact_barycentrics():
    uvs = np.array([[0.1, 0.1], [0.9, 0.2], [0.3, 0.8]])
    face_of, weights = baking.rasterize(uvs, np.array([[0, 1, 2]]), 64)
    rows, columns = np.nonzero(face_of == 0)
    centers = np.stack([(columns + 0.5) / 64, (rows + 0.5) / 64], 1)
    rebuilt = weights[rows, columns].astype(float) @ uvs
    # A centre inside maps back onto itself; one just outside (kept for the border) onto the nearest edge.
    a, b, c = uvs
    inside = np.abs(np.cross(b - a, c - a)) - (np.abs(np.cross(b - centers, c - centers))
                                               + np.abs(np.cross(c - centers, a - centers))
                                               + np.abs(np.cross(a - centers, b - centers))) > -1e-9
    assert np.abs(rebuilt[inside] - centers[inside]).max() < 1e-5
    assert (np.linalg.norm(rebuilt - centers, axis=1) < (baking.EDGE_TOLERANCE + 0.01) / 64 * 1.5).all()
    area = 0.5 * abs(np.cross(b - a, c - a)) * 64 * 64
    assert inside.sum() == pytest.approx(area, rel=0.05)          # the centres inside: the area in texels
    assert len(rows) > inside.sum()                               # plus a border ring
    assert np.allclose(weights[face_of == 0].sum(1), 1.0, atol=1e-5)


def test_dilation_fills_the_texels_next_to_each_chart_from_that_chart():
    size = 64
    image, covered = np.zeros((size, size, 3), np.float32), np.zeros((size, size), bool)
    covered[10:20, 5:15], covered[40:50, 40:60] = True, True
    image[10:20, 5:15], image[40:50, 40:60] = [1, 0, 0], [0, 0, 1]
    filled = baking.dilate(image, covered, pixels=8)
    assert np.array_equal(filled[covered], image[covered])                        # charts unchanged
    assert np.allclose(filled[2:28, 0:23], [1, 0, 0])                            # 8 texels round the red chart
    assert np.allclose(filled[32:58, 32:64], [0, 0, 1])                          # and round the blue one
    assert np.allclose(filled[0, 63], image[covered].mean(0))                     # the rest: the charts' mean


def test_a_known_colour_field_baked_on_a_sphere_comes_back_through_the_uvs(tmp_path):
    outputs = run_export(tmp_path, "glb", faces=2000, texture=256)
    assert outputs["format"] == "glb" and outputs["texture"] is None and outputs["frame"] is None
    assert outputs["export"] == str(tmp_path / "mesh_textured.glb") and abs(outputs["faces"] - 2000) <= 200
    document, arrays, png = read_glb(outputs["export"])
    primitive = document["meshes"][0]["primitives"][0]
    assert document["asset"] == {"version": "2.0", "generator": "Marble"}
    faces = arrays[primitive["indices"]].reshape(-1, 3)
    positions = arrays[primitive["attributes"]["POSITION"]]
    normals = arrays[primitive["attributes"]["NORMAL"]]
    uvs = arrays[primitive["attributes"]["TEXCOORD_0"]]
    assert len(faces) == outputs["faces"] and len(positions) >= outputs["vertices"]
    accessor = document["accessors"][primitive["attributes"]["POSITION"]]
    assert np.allclose(accessor["min"], positions.min(0)) and np.allclose(accessor["max"], positions.max(0))
    material = document["materials"][primitive["material"]]["pbrMetallicRoughness"]
    assert material["metallicFactor"] == 0 and material["roughnessFactor"] == 1
    assert document["images"][0]["mimeType"] == "image/png" and "bufferView" in document["images"][0]
    for view in document["bufferViews"]:
        assert view["byteOffset"] % 4 == 0
    # Axes: the file is Y up, and (x, y, z) of world is (x, z, -y) in it.
    world = z_up(positions)
    assert np.allclose((positions.min(0) + positions.max(0)) / 2, [CENTER[0], CENTER[2], -CENTER[1]], atol=0.02)
    assert np.abs(np.linalg.norm(world - CENTER, axis=1) - 1.0).max() < 0.01
    assert (np.einsum("ij,ij->i", z_up(normals), world - CENTER) > 0.95).all()   # normals too, outward
    corners = world[faces]
    assert (np.einsum("ij,ij->i", np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]),
                      corners.mean(1) - CENTER) > 0).all()                            # counter-clockwise outside
    texture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float) / 255.0
    assert texture.shape == (256, 256, 3)
    centroid_uv, centroid = uvs[faces].mean(1), world[faces].mean(1)
    error = np.abs(baking.sample(texture, centroid_uv) - field(centroid))
    assert error.max() < 4 / 255, error.max()


def test_the_axis_mapping_is_a_rotation_and_trimesh_reads_the_glb_as_written(tmp_path):
    points = np.random.default_rng(0).normal(size=(50, 3))
    assert np.allclose(z_up(y_up(points)), points)
    basis = y_up(np.eye(3))
    assert np.allclose(basis @ basis.T, np.eye(3)) and np.linalg.det(basis) == pytest.approx(1.0)
    outputs = run_export(tmp_path, "glb", faces=500, texture=64)
    loaded = trimesh.load(outputs["export"], force="mesh", process=False)
    _, arrays, _ = read_glb(outputs["export"])
    assert np.allclose(np.asarray(loaded.vertices), arrays[1], atol=1e-6)        # glTF's own Y-up numbers
    box = z_up(np.asarray(loaded.vertices))
    assert np.allclose((box.min(0) + box.max(0)) / 2, CENTER, atol=0.02)
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals) and loaded.visual.material is not None


def test_obj_mtl_and_png_read_back(tmp_path):
    outputs = run_export(tmp_path, "obj", faces=1000, texture=128)
    assert outputs["format"] == "obj" and outputs["texture"] == str(tmp_path / "mesh_textured.png")
    positions, uvs, normals, faces, mtllib = read_obj(outputs["export"])
    assert mtllib == "mesh_textured.mtl" and len(faces) == outputs["faces"]
    assert len(positions) == outputs["vertices"] == len(normals)                    # one v per mesh vertex
    world = z_up(positions)
    assert np.abs(np.linalg.norm(world - CENTER, axis=1) - 1.0).max() < 0.01
    with open(tmp_path / "mesh_textured.mtl") as f:
        assert "map_Kd mesh_textured.png" in f.read().splitlines()
    texture = np.asarray(Image.open(outputs["texture"]).convert("RGB"), dtype=float) / 255.0
    assert texture.shape == (128, 128, 3)
    uv = uvs[faces[:, :, 1]].mean(1)
    gltf_uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1)                                 # OBJ's v runs upwards
    error = np.abs(baking.sample(texture, gltf_uv) - field(world[faces[:, :, 0]].mean(1)))
    assert error.max() < 8 / 255, error.max()
    assert sorted(os.listdir(tmp_path)) == ["mesh_textured.mtl", "mesh_textured.obj", "mesh_textured.png"]


def test_ply_format_has_the_field_as_vertex_colours(tmp_path):
    outputs = run_export(tmp_path, "ply", faces=800)
    assert outputs["texture"] is None and outputs["export"].endswith("mesh_textured.ply")
    vertices, faces, colors = read_triangles(outputs["export"])
    assert len(faces) == outputs["faces"] and len(vertices) == outputs["vertices"]
    assert np.abs(colors - field(vertices)).max() < 1 / 255 + 1e-6


def test_progress_covers_every_phase_and_ends_at_one(tmp_path):
    events = Events()
    run_export(tmp_path, "glb", faces=500, texture=64, events=events)
    progress = [e for e in events.events if e["event"] == "progress"]
    assert [p["phase"] for p in progress][0] == "decimate" and progress[-1]["phase"] == "write"
    assert {p["phase"] for p in progress} == {"decimate", "unwrap", "bake", "write"}
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(0 <= p["iteration"] <= p["total"] for p in progress)


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_a_cancel_or_a_failure_leaves_no_file(tmp_path, fmt, monkeypatch):
    calls = []
    run_export(tmp_path / "count", fmt, faces=500, texture=64, check=lambda: calls.append(1))
    assert len(calls) >= 3
    for when in range(len(calls)):  # a cancel at each check in turn leaves nothing behind
        seen = []

        def cancel_then(when=when, seen=seen):
            seen.append(1)
            if len(seen) > when:
                raise ExportCancelled()

        with pytest.raises(ExportCancelled):
            run_export(tmp_path, fmt, faces=500, texture=64, check=cancel_then)
        assert os.listdir(tmp_path) == ["count"]
    tmp_path = tmp_path / "count"
    # An old export stays as it was when a new one fails while writing.
    run_export(tmp_path, fmt, faces=500, texture=64)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    import engine.export.obj as obj
    import engine.export.run as run

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(run, "write_ply", full_disk)
    monkeypatch.setattr(obj, "obj_text", full_disk)
    monkeypatch.setattr("engine.export.gltf.glb_bytes", full_disk)
    with pytest.raises(OSError):
        run_export(tmp_path, fmt, faces=400, texture=64)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_the_export_section_of_the_configuration():
    import dataclasses

    from engine.config import CHOICES, RANGES, Config, InputError, preset
    from engine.doctor import OPTIONAL
    for name in ("cpu", "fast", "quality"):
        cfg = preset(name)
        assert (cfg.export.faces, cfg.export.texture, cfg.export.format) == (0, 2048, "glb")  # no export unless asked
        for f in dataclasses.fields(cfg.export):
            if isinstance(getattr(cfg.export, f.name), int):
                assert f"export.{f.name}" in RANGES
    cfg.set("export.faces=20000")
    cfg.set("export.format=obj")
    assert (cfg.export.faces, cfg.export.format) == (20000, "obj") and CHOICES["export.format"] == ("glb", "obj", "ply")
    with pytest.raises(InputError, match="export.format must be one of glb, obj, ply"):
        cfg.set("export.format=usd")
    old = preset("cpu").to_dict()
    del old["export"]                                              # a job from before the export section
    assert Config.from_dict(old).export == preset("cpu").export
    assert {"fast-simplification", "xatlas", "usd-core"} <= {pip for _, pip in OPTIONAL}
