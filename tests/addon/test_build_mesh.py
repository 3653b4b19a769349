"""marble.import_mesh and the PLY reader behind it."""
import bpy
import numpy as np
import pytest

from conftest import icosphere, make_rig, ring_cameras, write_ply


def _colours(n):
    return (np.arange(n * 3).reshape(n, 3) * 7 % 256).astype(np.uint8)


def test_import_mesh_engine_ply(marble, tmp_path):
    vertices, faces = icosphere(0.5)
    vertices = vertices + [1.0, -2.0, 0.25]
    colours = _colours(len(vertices))
    path = write_ply(tmp_path / "mesh.ply", vertices, faces, colours)
    assert bpy.ops.marble.import_mesh(filepath=path) == {'FINISHED'}

    obj = bpy.data.objects["mesh"]
    mesh = obj.data
    assert obj.name in bpy.context.scene.collection.all_objects
    assert (len(mesh.vertices), len(mesh.polygons), len(mesh.edges)) == (12, 20, 30)
    co = np.zeros(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    assert np.allclose(co.reshape(-1, 3), vertices, atol=1e-6)  # world coordinates, no transform
    assert np.array(obj.matrix_world) == pytest.approx(np.eye(4))
    loops = np.zeros(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", loops)
    assert np.array_equal(loops.reshape(-1, 3), faces)

    attribute = mesh.color_attributes["Color"]
    assert (attribute.domain, attribute.data_type) == ('POINT', 'BYTE_COLOR')
    assert mesh.color_attributes.active_color.name == "Color"
    srgb = np.zeros(len(mesh.vertices) * 4, dtype=np.float32)
    attribute.data.foreach_get("color_srgb", srgb)
    assert np.abs(srgb.reshape(-1, 4)[:, :3] * 255.0 - colours).max() < 0.6

    material = mesh.materials[0]
    node = next(n for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeVertexColor")
    assert node.layer_name == "Color"
    assert any(link.from_node == node and link.to_socket.name == "Base Color" for link in material.node_tree.links)


def test_import_mesh_goes_into_rig_collection(marble, tmp_path):
    bpy.ops.marble.import_rig(filepath=make_rig(tmp_path, ring_cameras(count=2), name="studio"))
    vertices, faces = icosphere()
    bpy.ops.marble.import_mesh(filepath=write_ply(tmp_path / "result.ply", vertices, faces))
    assert "result" in bpy.data.collections["studio"].objects


def test_ascii_ply_with_quads(marble, tmp_path):
    path = tmp_path / "quad.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 5\nproperty float x\nproperty float y\n"
                    "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
                    "element face 2\nproperty list uchar int vertex_indices\nend_header\n"
                    "0 0 0 255 0 0\n1 0 0 0 255 0\n1 1 0 0 0 255\n0 1 0 255 255 255\n0.5 2 0 10 20 30\n"
                    "4 0 1 2 3\n3 3 2 4\n")
    bpy.ops.marble.import_mesh(filepath=str(path))
    mesh = bpy.data.objects["quad"].data
    assert [len(p.vertices) for p in mesh.polygons] == [4, 3]
    assert list(mesh.polygons[1].vertices) == [3, 2, 4]


def test_binary_mixed_polygons_and_big_endian(marble, tmp_path):
    # Not the engine's format, but other tools write these: the reader's general path.
    header = ("ply\nformat binary_big_endian 1.0\nelement vertex 5\nproperty double x\nproperty double y\n"
              "property double z\nelement face 2\nproperty list uchar uint vertex_indices\nend_header\n")
    body = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 2, 0]], dtype=">f8").tobytes()
    body += bytes([4]) + np.array([0, 1, 2, 3], dtype=">u4").tobytes()
    body += bytes([3]) + np.array([3, 2, 4], dtype=">u4").tobytes()
    (tmp_path / "be.ply").write_bytes(header.encode() + body)
    vertices, starts, loops, colours = marble.mesh.read_ply(str(tmp_path / "be.ply"))
    assert vertices.shape == (5, 3) and vertices[4, 1] == 2.0
    assert starts.tolist() == [0, 4] and loops.tolist() == [0, 1, 2, 3, 3, 2, 4]
    assert colours is None


@pytest.mark.parametrize("problem", ["not-ply", "truncated", "bad-index", "missing"])
def test_bad_mesh_is_reported_and_builds_nothing(marble, tmp_path, problem):
    vertices, faces = icosphere()
    path = write_ply(tmp_path / "bad.ply", vertices, faces)
    data = open(path, "rb").read()
    if problem == "not-ply":
        (tmp_path / "bad.ply").write_bytes(b"solid cube\nendsolid\n")
        match = "not a PLY"
    elif problem == "truncated":
        (tmp_path / "bad.ply").write_bytes(data[:-100])
        match = "bad.ply"
    elif problem == "bad-index":
        faces = faces.copy()
        faces[5, 1] = 99
        write_ply(tmp_path / "bad.ply", vertices, faces)
        match = "does not exist"
    else:
        path = str(tmp_path / "absent.ply")
        match = "No such mesh file"
    counts = (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials))
    with pytest.raises(RuntimeError, match=match):
        bpy.ops.marble.import_mesh(filepath=path)
    assert (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials)) == counts
