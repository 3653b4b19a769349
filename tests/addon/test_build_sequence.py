"""marble.import_sequence and addon/build/sequence.py: a dynamic job's meshes/sequence.json becomes one object
per frame, exactly one of them visible at every frame of the sequence, placed by world_from_canonical
for canonical sequences; a bad sequence is reported and adds nothing."""
import json
import os
import time

import bpy
import numpy as np
import pytest

from addon_conftest import similarity
from conftest import icosphere, make_rig, ring_cameras, write_ply

FRAMES = [1, 2, 3, 5, 6, 8]  # gaps after 3 and 6


def frame_vertices(frame, base=None):
    """A small mesh per frame, shifted along x by the frame so that each frame's is recognisable."""
    vertices, faces = base if base is not None else icosphere(0.3)
    return vertices + [float(frame), 0.5, -0.25], faces


def write_sequence(folder, frames, coordinates=None, matrices=None, meshes=None, absolute=(), order=None,
                   base=None):
    """JOB/meshes/frame_NNNNNN.ply for each frame and JOB/meshes/sequence.json; returns the json's path.

    `matrices`: {frame: 4x4} (identity otherwise); `meshes`: {frame: file name} to override; `absolute`:
    frames whose mesh path is written absolute (relative to the json's folder otherwise); `order`: the
    order of the entries in the file."""
    meshes_dir = os.path.join(str(folder), "meshes")
    os.makedirs(meshes_dir, exist_ok=True)
    entries = []
    for frame in (order or frames):
        name = (meshes or {}).get(frame, f"frame_{frame:06d}.ply")
        path = os.path.join(meshes_dir, name)
        if not os.path.exists(path):
            vertices, faces = frame_vertices(frame, base)
            colours = np.tile(np.array([[frame * 20 % 256, 100, 200]], dtype=np.uint8), (len(vertices), 1))
            write_ply(path, vertices, faces, colours)
        matrix = np.eye(4) if matrices is None or frame not in matrices else np.asarray(matrices[frame])
        entries.append({"frame": frame, "mesh": path if frame in absolute else name,
                        "world_from_canonical": np.asarray(matrix).tolist(), "seconds": frame / 30.0})
    data = {"frames": entries}
    if coordinates is not None:
        data["coordinates"] = coordinates
    json_path = os.path.join(meshes_dir, "sequence.json")
    with open(json_path, "w") as f:
        json.dump(data, f)
    return json_path


def visible(collection):
    return [o for o in collection.objects if not o.hide_viewport and not o.hide_render]


def mesh_vertices(mesh):
    co = np.zeros(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


def check_one_visible_per_frame(collection, frames, name="seq"):
    scene = bpy.context.scene
    for f in range(frames[0], frames[-1] + 1):
        scene.frame_set(f)
        shown = visible(collection)
        expected = max(x for x in frames if x <= f)
        assert [o.name for o in shown] == [f"{name} {expected:06d}"], f"frame {f}"
        assert shown[0]["marble_frame"] == expected
    for f in (frames[0] - 1, frames[-1] + 1):  # outside the sequence: none
        scene.frame_set(f)
        assert visible(collection) == [], f"frame {f}"


def _fcurves(obj):
    from bpy_extras import anim_utils

    anim = obj.animation_data
    bag = anim_utils.action_get_channelbag_for_slot(anim.action, anim.action_slot)
    return {(fc.data_path, fc.array_index): fc for fc in bag.fcurves}


def counts():
    return {kind: len(getattr(bpy.data, kind)) for kind in
            ("objects", "collections", "meshes", "actions", "materials")}


def test_world_sequence_with_gaps(marble, tmp_path):
    job = tmp_path / "seq"
    path = write_sequence(job, FRAMES, absolute=(5,), order=[5, 1, 8, 2, 6, 3])

    read = marble.sequence_io.read_sequence(str(job))  # a job folder finds its meshes/sequence.json
    assert read.path == path and read.name == "seq" and read.coordinates == "world"
    assert [f.frame for f in read.frames] == FRAMES
    assert all(os.path.isabs(f.mesh) and os.path.isfile(f.mesh) for f in read.frames)
    assert read.frames[0].seconds == pytest.approx(1 / 30.0)

    scene = bpy.context.scene
    assert bpy.ops.marble.import_sequence(filepath=path) == {'FINISHED'}
    collection = bpy.data.collections["seq"]
    assert collection.name in scene.collection.children
    assert sorted(o.name for o in collection.objects) == [f"seq {f:06d}" for f in FRAMES]
    assert (scene.frame_start, scene.frame_end, scene.frame_current) == (1, 8, 1)
    assert collection["marble_frame_count"] == 6 and collection["marble_coordinates"] == "world"

    for f in FRAMES:
        obj = bpy.data.objects[f"seq {f:06d}"]
        assert np.allclose(mesh_vertices(obj.data), frame_vertices(f)[0], atol=1e-6)
        assert len(obj.data.polygons) == 20 and len(obj.data.edges) == 30
        loops = np.zeros(len(obj.data.loops), dtype=np.int32)
        obj.data.loops.foreach_get("vertex_index", loops)
        assert np.array_equal(loops.reshape(-1, 3), icosphere()[1])
        assert obj.data.color_attributes.active_color.name == "Color"
        assert np.array(obj.matrix_world) == pytest.approx(np.eye(4))
        assert obj["marble_seconds"] == pytest.approx(f / 30.0)
        curves = _fcurves(obj)
        assert set(curves) == {("hide_viewport", 0), ("hide_render", 0)}
        for fc in curves.values():
            assert {k.interpolation for k in fc.keyframe_points} == {'CONSTANT'}
    # Keys: hidden the frame before, shown at its frame, hidden again when the next one appears.
    keys = {name: [tuple(k.co) for k in fc.keyframe_points]
            for (name, _), fc in _fcurves(bpy.data.objects["seq 000003"]).items()}
    assert keys["hide_viewport"] == keys["hide_render"] == [(2.0, 1.0), (3.0, 0.0), (5.0, 1.0)]

    check_one_visible_per_frame(collection, FRAMES)


def test_sequence_survives_save_and_reload(marble, tmp_path):
    path = write_sequence(tmp_path / "seq", FRAMES)
    assert bpy.ops.marble.import_sequence(filepath=path) == {'FINISHED'}
    blend = str(tmp_path / "sequence.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    bpy.ops.wm.read_homefile(use_empty=True)
    assert "seq" not in bpy.data.collections
    bpy.ops.wm.open_mainfile(filepath=blend)
    scene = bpy.context.scene
    assert (scene.frame_start, scene.frame_end) == (1, 8)
    check_one_visible_per_frame(bpy.data.collections["seq"], FRAMES)


def test_sequence_goes_into_rig_collection(marble, tmp_path):
    bpy.ops.marble.import_rig(filepath=make_rig(tmp_path, ring_cameras(count=2), name="studio"))
    path = write_sequence(tmp_path / "job-7", [4, 5])
    assert bpy.ops.marble.import_sequence(filepath=path) == {'FINISHED'}
    studio = bpy.data.collections["studio"]
    assert "job-7" in studio.children
    assert sorted(o.name for o in studio.children["job-7"].objects) == ["job-7 000004", "job-7 000005"]
    # A second import gets its own collection, and its objects follow its name.
    assert bpy.ops.marble.import_sequence(filepath=path) == {'FINISHED'}
    assert sorted(o.name for o in bpy.data.collections["job-7.001"].objects) == [
        "job-7.001 000004", "job-7.001 000005"]


def test_canonical_sequence_is_placed_per_frame(marble, tmp_path):
    frames = [10, 11, 12]
    matrices = {10: similarity(0.3, (0, 0, 1), (1.0, 2.0, -0.5), (1.0, 1.0, 1.0)),
                11: similarity(2.9, (1, -2, 0.5), (-3.25, 0.125, 4.0), (0.5, 0.5, 0.5)),
                12: similarity(-1.2, (0.3, 1, 1), (0.0, -7.5, 2.0), (-1.5, 0.75, 2.0))}  # a mirror
    # Frames 10 and 12 share one canonical mesh file: one mesh datablock for both.
    path = write_sequence(tmp_path / "canon", frames, coordinates="canonical", matrices=matrices,
                          meshes={10: "template.ply", 12: "template.ply"})
    assert bpy.ops.marble.import_sequence(filepath=path) == {'FINISHED'}
    collection = bpy.data.collections["canon"]
    assert collection["marble_coordinates"] == "canonical"
    objects = {f: bpy.data.objects[f"canon {f:06d}"] for f in frames}
    assert objects[10].data == objects[12].data and objects[11].data != objects[10].data
    assert len(bpy.data.meshes) == 2

    scene = bpy.context.scene
    for f in frames:
        scene.frame_set(f)
        obj = objects[f]
        assert visible(collection) == [obj]
        ply = frame_vertices(10 if f == 12 else f)[0]
        assert np.allclose(mesh_vertices(obj.data), ply, atol=1e-6)
        world = np.array(obj.matrix_world)
        assert np.allclose(world, matrices[f], atol=1e-5), (f, world, matrices[f])
        assert np.allclose(np.array(obj["marble_world_from_canonical"]).reshape(4, 4), matrices[f])
        curves = _fcurves(obj)
        assert {name for name, _ in curves} == {"hide_viewport", "hide_render", "location",
                                                "rotation_quaternion", "scale"}
        for (name, _), fc in curves.items():
            assert {k.interpolation for k in fc.keyframe_points} == {'CONSTANT'}
            if name not in ("hide_viewport", "hide_render"):
                assert [k.co[0] for k in fc.keyframe_points] == [f]
    check_one_visible_per_frame(collection, frames, name="canon")


def _bad_sequence(folder, problem):
    """A sequence.json with one problem; returns (path, text the error names besides the json's path)."""
    path = write_sequence(folder, [1, 2, 3])
    data = json.load(open(path))
    entries = data["frames"]
    if problem == "malformed":
        open(path, "w").write('{"frames": [{"frame": 1, "mesh": "frame_000001.ply"},')
        return path, "not valid JSON"
    if problem == "missing-mesh":
        entries[2]["mesh"] = "frame_000099.ply"
        expected = "frames[2] (frame 3): mesh file"
    elif problem == "duplicate":
        entries[2]["frame"] = 1
        expected = "frames[2]: frame 1 appears twice (also frames[0])"
    elif problem == "nan":
        entries[1]["world_from_canonical"][0][3] = float("nan")
        expected = "frames[1] (frame 2): 'world_from_canonical' contains NaN"
    elif problem == "shape":
        entries[1]["world_from_canonical"] = entries[1]["world_from_canonical"][:3]
        expected = "must be 4x4"
    elif problem == "missing-key":
        del entries[1]["frame"]
        expected = "frames[1]: missing key 'frame'"
    elif problem == "non-integer":
        entries[0]["frame"] = 1.5
        expected = "frames[0]: 'frame' must be an integer"
    elif problem == "shear":
        data["coordinates"] = "canonical"
        entries[1]["world_from_canonical"][0][1] = 0.5
        expected = "has shear"
    elif problem == "bad-ply":  # only the last file is bad: the others were read already
        mesh = os.path.join(os.path.dirname(path), "frame_000003.ply")
        raw = open(mesh, "rb").read()
        open(mesh, "wb").write(raw[:-50])
        return path, "frame_000003.ply"
    json.dump(data, open(path, "w"))
    return path, expected


@pytest.mark.parametrize("problem", ["malformed", "missing-mesh", "duplicate", "nan", "shape", "missing-key",
                                     "non-integer", "shear", "bad-ply"])
def test_bad_sequence_is_reported_and_builds_nothing(marble, tmp_path, problem):
    path, expected = _bad_sequence(tmp_path / "bad", problem)
    scene = bpy.context.scene
    before, frame_range = counts(), (scene.frame_start, scene.frame_end)
    with pytest.raises(RuntimeError) as error:
        bpy.ops.marble.import_sequence(filepath=path)
    message = str(error.value)
    assert path in message and expected in message, message
    assert counts() == before
    assert (scene.frame_start, scene.frame_end) == frame_range
    # The reader alone raises SequenceError (a ValueError) without touching Blender data.
    if problem != "bad-ply":
        with pytest.raises(marble.sequence_io.SequenceError, match="bad"):
            marble.sequence_io.read_sequence(path)


def test_failure_while_building_removes_everything(marble, tmp_path, monkeypatch):
    """Anything failing after Blender data was created: the collection, objects, meshes, actions and the
    vertex colour material made so far are all removed again."""
    read = marble.sequence_io.read_sequence(write_sequence(tmp_path / "seq", FRAMES))
    real, calls = marble.blocks.keyframes, []

    def failing(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 7:
            raise RuntimeError("keying failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(marble.blocks, "keyframes", failing)
    before = counts()
    assert "Marble Vertex Color" not in bpy.data.materials
    scene = bpy.context.scene
    with pytest.raises(RuntimeError, match="keying failed"):
        marble.sequence.build_sequence(read, "seq", scene.collection, scene)
    assert counts() == before


def uv_sphere(rings, segments, radius=1.0):
    """(rings - 1) * segments + 2 vertices, triangles only."""
    theta = np.linspace(0.0, np.pi, rings + 1)[1:-1]
    phi = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1).reshape(-1, 3)
    vertices = np.vstack([[0.0, 0.0, 1.0], ring, [0.0, 0.0, -1.0]]) * radius
    j = np.arange(segments)
    jn = (j + 1) % segments
    top = np.stack([np.zeros(segments, dtype=int), 1 + j, 1 + jn], axis=1)
    r = np.arange(rings - 2)[:, None]
    a, b = 1 + r * segments + j, 1 + r * segments + jn
    band = np.concatenate([np.stack([a, a + segments, b], axis=-1).reshape(-1, 3),
                           np.stack([b, a + segments, b + segments], axis=-1).reshape(-1, 3)])
    last = 1 + (rings - 2) * segments
    bottom = np.stack([np.full(segments, len(vertices) - 1), last + jn, last + j], axis=1)
    return vertices, np.concatenate([top, band, bottom])


def test_a_long_sequence_imports(marble, tmp_path):
    """60 frames of 5k-vertex meshes (the time is printed; `python3 build.py bench sequence` measures
    300 frames of 50k vertices; no test asserts a time)."""
    frames = list(range(1, 61))
    base = uv_sphere(50, 100)
    assert len(base[0]) == 4902
    path = write_sequence(tmp_path / "perf", frames, base=base)
    started = time.perf_counter()
    assert bpy.ops.marble.import_sequence(filepath=path) == {'FINISHED'}
    elapsed = time.perf_counter() - started
    print(f"60 frames of {len(base[0])} vertices imported in {elapsed:.1f} s")
    collection = bpy.data.collections["perf"]
    assert len(collection.objects) == 60
    for f in (1, 30, 60):
        bpy.context.scene.frame_set(f)
        assert [o.name for o in visible(collection)] == [f"perf {f:06d}"]
