"""A USD sequence (engine.export.usd) in Blender: marble.import_sequence and build_sequence_cache make ONE
object whose Mesh Sequence Cache streams the frames; at every frame its evaluated mesh has that frame's
vertex count and bounding box (a gap holds the last mesh), the colours arrive as "displayColor", the
frame range is the sequence's; a bad file adds nothing."""
import json
import os

import bpy
import numpy as np
import pytest

from conftest import icosphere, write_ply

pytest.importorskip("pxr")  # the engine side writes the file with usd-core
from engine.export.usd import write_usd_sequence  # noqa: E402

FRAMES = [2, 3, 5, 6]  # a gap at 4: frame 3's mesh holds there


def frame_mesh(frame):
    """Icosphere (12 vertices) on odd frames, tetrahedron (4) on even ones, grown and moved by the frame."""
    if frame % 2:
        vertices, faces = icosphere(0.4)
    else:
        vertices = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) * 0.5
        faces = np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    return vertices * (1.0 + 0.1 * frame) + [0.5 * frame, -0.25, 0.125], faces


def placement(frame):
    m = np.eye(4)
    c, s = np.cos(0.4 * frame), np.sin(0.4 * frame)
    m[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    m[:3, 3] = [0.0, frame, 1.0]
    return m


def expected(frame):
    """(vertex count, bounding box min, max) in world coordinates at `frame`."""
    shown = max(f for f in FRAMES if f <= frame)
    vertices, _ = frame_mesh(shown)
    m = placement(shown)
    world = vertices @ m[:3, :3].T + m[:3, 3]
    return len(vertices), world.min(0), world.max(0)


@pytest.fixture
def usd_sequence(tmp_path):
    """JOB/meshes/sequence.usdc written by the engine from canonical PLYs."""
    meshes = tmp_path / "job" / "meshes"
    meshes.mkdir(parents=True)
    entries = []
    for frame in FRAMES:
        vertices, faces = frame_mesh(frame)
        colours = np.tile(np.array([[40 * frame, 128, 255]], dtype=np.uint8), (len(vertices), 1))
        write_ply(meshes / f"frame_{frame:06d}.ply", vertices, faces, colours)
        entries.append({"frame": frame, "mesh": f"frame_{frame:06d}.ply",
                        "world_from_canonical": placement(frame).tolist()})
    (meshes / "sequence.json").write_text(json.dumps({"coordinates": "canonical", "frames": entries}))
    return write_usd_sequence(str(meshes / "sequence.json"), str(meshes / "sequence.usdc"))["path"]


def check_every_frame(obj):
    scene = bpy.context.scene
    assert (scene.frame_start, scene.frame_end) == (FRAMES[0], FRAMES[-1])
    for frame in range(FRAMES[0], FRAMES[-1] + 1):
        scene.frame_set(frame)
        mesh = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
        count, low, high = expected(frame)
        co = np.zeros(len(mesh.vertices) * 3)
        mesh.vertices.foreach_get("co", co)
        co = co.reshape(-1, 3)
        assert len(co) == count, frame
        np.testing.assert_allclose(co.min(0), low, atol=1e-5, err_msg=f"frame {frame}")
        np.testing.assert_allclose(co.max(0), high, atol=1e-5, err_msg=f"frame {frame}")
        colour = mesh.attributes.get("displayColor")
        assert colour is not None and colour.domain == 'POINT', frame
        srgb = 40 * max(f for f in FRAMES if f <= frame) / 255  # the PLY's red byte, decoded to linear
        assert colour.data[0].color[0] == pytest.approx(((srgb + 0.055) / 1.055) ** 2.4, abs=1e-5)
        assert [m.name for m in mesh.materials] == ["Marble Display Color"]


def added(before):
    return {kind: len(getattr(bpy.data, kind)) - n for kind, n in before.items()
            if len(getattr(bpy.data, kind)) != n}


def counts():
    return {kind: len(getattr(bpy.data, kind)) for kind in
            ("objects", "meshes", "materials", "cache_files", "collections", "actions")}


def test_import_sequence_streams_a_usd_file_through_one_cached_object(marble, usd_sequence):
    assert bpy.ops.marble.import_sequence(filepath=usd_sequence) == {'FINISHED'}
    objects = list(bpy.data.objects)
    assert len(objects) == 1 and objects[0].name == "job" and objects[0].type == 'MESH'
    obj = objects[0]
    caches = [m for m in obj.modifiers if m.type == 'MESH_SEQUENCE_CACHE']
    assert len(caches) == 1 and caches[0].object_path == "/sequence"
    assert os.path.samefile(bpy.path.abspath(caches[0].cache_file.filepath), usd_sequence)
    assert 'COLOR' in caches[0].read_data and obj.matrix_world == obj.matrix_world.Identity(4)
    assert bpy.context.scene.frame_current == FRAMES[0]
    check_every_frame(obj)


def test_build_sequence_cache_into_a_collection(marble, usd_sequence):
    scene = bpy.context.scene
    collection = bpy.data.collections.new("rig")
    scene.collection.children.link(collection)
    obj = marble.sequence_cache.build_sequence_cache(usd_sequence, "take 1", collection, scene)
    assert obj.name == "take 1" and list(collection.objects) == [obj] and list(scene.collection.objects) == []
    assert list(bpy.data.objects) == [obj]
    assert obj[marble.sequence_cache.PROP_USD] == usd_sequence
    check_every_frame(obj)


def test_a_bad_file_adds_nothing_and_keeps_the_frame_range(marble, tmp_path, usd_sequence):
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end, scene.frame_current = 10, 20, 15
    garbage = tmp_path / "garbage.usdc"
    garbage.write_bytes(b"PXR-USDC" + bytes(range(256)) * 4)  # a crate's magic, then nonsense
    other = tmp_path / "other.usda"  # a valid stage without Marble's /sequence mesh
    other.write_text('#usda 1.0\n(\n    startTimeCode = 1\n    endTimeCode = 9\n)\n\ndef Xform "world"\n{\n}\n')
    text = tmp_path / "notes.usd"
    text.write_text("hello")
    before = counts()
    for path, message in ((garbage, "garbage.usdc"), (other, "no mesh at /sequence"), (text, "not a USD file"),
                          (tmp_path / "missing.usdc", "missing.usdc")):
        with pytest.raises(RuntimeError, match=message):  # the operator's error report
            bpy.ops.marble.import_sequence(filepath=str(path))
        with pytest.raises((marble.sequence_cache.SequenceCacheError, FileNotFoundError), match=message):
            marble.sequence_cache.build_sequence_cache(str(path), "x", scene.collection, scene)
        assert added(before) == {}, path
        assert (scene.frame_start, scene.frame_end, scene.frame_current) == (10, 20, 15), path


def test_the_file_browser_offers_both_forms(marble):
    rna = bpy.ops.marble.import_sequence.get_rna_type()
    assert rna.properties["filter_glob"].default == "*.json;*.usd;*.usdc;*.usda"
