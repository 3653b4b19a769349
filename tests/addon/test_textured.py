"""Results > Export Textured Mesh: `python -m engine export JOB --faces N --texture PX --format glb` as a
job through the job client, against a stand-in engine (stand_in_export.py) that plays the export's
events and writes a real textured glTF binary (trimesh) of a known sphere; at done Blender's glTF
importer brings it back at the dataset's world coordinates as "<rig> textured" in the rig's
collection, replacing an earlier one in place. A dynamic job's "Streaming Sequence (USD)" the same way
(the stand-in writes the USD with pxr). (The real engine's export is tested with the engine.)"""
import importlib.util
import json
import os
import sys
import types

import bpy
import numpy as np
import pytest

from addon_conftest import bpy_free, run_ticks, stand_in_engine
from conftest import icosphere, make_rig, ring_cameras, write_ply

pytest.importorskip("trimesh")


@pytest.fixture
def exporter(marble, tmp_path, monkeypatch):
    """A scene with the rig "studio" and its finished static job (JOB/meshes/mesh.ply) as the last job;
    the job client pointed at the export stand-in."""
    stand_in_engine(marble, tmp_path / "export_root", "stand_in_export.py", monkeypatch)
    assert bpy.ops.marble.import_rig(filepath=make_rig(tmp_path, ring_cameras(count=3), name="studio")) == {'FINISHED'}
    job = tmp_path / "job"
    (job / "meshes").mkdir(parents=True)
    write_ply(job / "meshes" / "mesh.ply", *icosphere(0.5))
    bpy.context.scene.marble.last_job = str(job)
    marble.prefs.python = sys.executable
    marble.job = str(job)
    marble.monkeypatch = monkeypatch
    return marble


def export(marble, mode="ok", fmt="glb", until=None):
    marble.monkeypatch.setenv("MARBLE_FAKE_MODE", mode)
    marble.jobs.start_export(bpy.context, fmt)
    return run_ticks(marble.jobs, until=until)


def panel_labels():
    """The sidebar drawn with test_register's recording layout: (calls, the labels joined)."""
    name = "marble_test_register"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), "test_register.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    calls = []
    sys.modules[name].draw_panels(calls)
    return calls, " | ".join(c[1] for c in calls if c[0] == "label")


def state():
    return bpy.context.window_manager.marble_job


def truth(marble):
    with open(os.path.join(marble.job, "export_truth.json")) as f:
        return json.load(f)


def world_vertices(obj):
    co = np.zeros(len(obj.data.vertices) * 3)
    obj.data.vertices.foreach_get("co", co)
    matrix = np.array(obj.matrix_world)
    return co.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]


def scene_blocks():
    return {kind: sorted(b.name for b in getattr(bpy.data, kind))
            for kind in ("objects", "meshes", "materials", "images", "collections")}


def test_textured_mesh_exported_and_imported_at_world_coordinates(exporter):
    settings = bpy.context.scene.marble
    assert (settings.export_faces, settings.export_texture) == (50000, '2048')  # the defaults
    assert bpy.ops.marble.export_textured() == {'FINISHED'}
    run_ticks(exporter.jobs)
    assert state().state == 'done' and state().kind == 'export', state().message
    assert state().progress == 1.0 and not state().resumable
    with open(os.path.join(exporter.job, "export_argv.json")) as f:
        recorded = json.load(f)
    assert recorded["argv"] == ["export", exporter.job, "--faces", "50000", "--texture", "2048", "--format", "glb"]
    assert os.path.samefile(recorded["cwd"], exporter.job)

    expected = truth(exporter)
    collection = bpy.data.collections["studio"]
    obj = bpy.data.objects["studio textured"]
    assert obj.type == 'MESH' and list(obj.users_collection) == [collection]
    assert state().message == f"Imported 'studio textured': {len(obj.data.vertices)} vertices, 320 faces, texture 32x32"
    # Where the dataset's world puts it: every vertex on a known one and every known one there (the
    # importer keeps the file's vertices; seams may repeat some).
    world = world_vertices(obj)
    known = np.array(expected["world"])
    distances = np.linalg.norm(world[:, None, :] - known[None, :, :], axis=2)
    assert distances.min(axis=1).max() < 1e-5 and distances.min(axis=0).max() < 1e-5
    assert np.allclose(np.array(obj.matrix_world), np.eye(4)) and obj.parent is None
    assert len(obj.data.polygons) == expected["faces"] == 320
    # A UV map, and a material whose Principled BSDF Base Color comes from the baked image, packed.
    assert len(obj.data.uv_layers) == 1
    image = exporter.textured.base_color_image(obj.material_slots[0].material)
    assert image is not None and tuple(image.size) == (32, 32) and image.packed_file is not None
    assert image.name == obj.material_slots[0].material.name == obj.data.name == "studio textured"
    # The importer's leftovers are gone: only the rig's collection and the textured mesh's own data.
    assert [c.name for c in bpy.data.collections] == ["studio"]
    assert not [o for o in bpy.data.objects if o.type == 'EMPTY' and o.name != "studio region"]


def test_export_again_replaces_in_place(exporter):
    export(exporter)
    assert state().state == 'done', state().message
    obj = bpy.data.objects["studio textured"]
    obj.location.x += 2.0  # the user's own placement stays
    pointer, before = obj.as_pointer(), scene_blocks()
    settings = bpy.context.scene.marble
    settings.export_faces, settings.export_texture = 100, '1024'
    export(exporter)
    assert state().state == 'done', state().message
    with open(os.path.join(exporter.job, "export_argv.json")) as f:
        assert json.load(f)["argv"][2:6] == ["--faces", "100", "--texture", "1024"]
    again = bpy.data.objects["studio textured"]
    assert again.as_pointer() == pointer and again.location.x == pytest.approx(2.0)
    assert len(again.data.polygons) == 80
    image = exporter.textured.base_color_image(again.material_slots[0].material)
    assert tuple(image.size) == (16, 16)
    # The same names, one of each: the old mesh, material and image are gone, no orphans.
    assert scene_blocks() == before
    assert all(block.users > 0 for kind in ("meshes", "materials", "images") for block in getattr(bpy.data, kind))


def test_cancel_adds_nothing(exporter):
    before = scene_blocks()
    exporter.monkeypatch.setenv("MARBLE_FAKE_MODE", "wait")
    job = exporter.jobs.start_export(bpy.context, "glb")
    run_ticks(exporter.jobs, until=lambda: state().phase == "bake" and state().iteration == 2)
    assert exporter.jobs.is_running() and state().kind == 'export'
    calls, labels = panel_labels()
    assert "Exporting: bake" in labels and "Baking the texture: 2 / 2" in labels
    assert ("progress", pytest.approx(0.8), "80%") in calls and ("operator", "marble.cancel") in calls
    assert ("operator", "marble.export_textured") in calls  # shown, disabled while the job runs
    assert exporter.jobs.cancel()
    run_ticks(exporter.jobs)
    assert state().state == 'cancelled' and not state().resumable
    assert state().message == "Export cancelled: nothing was written or imported"
    with open(os.path.join(job.job_dir, "export_stdin.txt")) as f:
        assert f.read() == "cancel\n"
    assert scene_blocks() == before
    assert os.listdir(os.path.join(exporter.job, "meshes")) == ["mesh.ply"]


@pytest.mark.parametrize("mode, problem", [("bad", "truncated or padded"), ("plain", "no texture coordinates"),
                                           ("error", "no checkpoint to export from")])
def test_a_bad_result_adds_nothing_and_says_why(exporter, mode, problem):
    before = scene_blocks()
    export(exporter, mode)
    assert state().state == 'failed' and problem in state().message
    if mode != "error":
        assert os.path.join(exporter.job, "meshes", "mesh_textured.glb") in state().message
    assert scene_blocks() == before


def test_a_failed_check_after_the_import_removes_what_it_made(exporter, monkeypatch):
    """The file passes the header checks, Blender imports it, and the result is refused afterwards (here:
    a check made to fail): the importer's objects, meshes, materials, images and empties all go."""
    export(exporter)
    path = os.path.join(exporter.job, "meshes", "mesh_textured.glb")
    before = scene_blocks()

    def refuse(path, objects):
        assert objects and bpy.data.images  # the importer did make them
        raise exporter.textured.TexturedError(f"{path}: refused")
    monkeypatch.setattr(exporter.textured, "_check", refuse)
    with pytest.raises(exporter.textured.TexturedError, match="refused"):
        exporter.textured.build_textured(path, "other", bpy.data.collections["studio"])
    assert scene_blocks() == before


def test_export_needs_a_finished_job(exporter):
    os.remove(os.path.join(exporter.job, "meshes", "mesh.ply"))
    with pytest.raises(RuntimeError, match="has no finished mesh"):
        bpy.ops.marble.export_textured()
    assert not exporter.jobs.is_running()


def test_streaming_sequence_usd(exporter):
    """A dynamic job: the panel offers the USD sequence; the stand-in writes it with pxr and it arrives as
    one sequence cache object in the rig's collection (build_sequence_cache)."""
    pytest.importorskip("pxr")
    os.remove(os.path.join(exporter.job, "meshes", "mesh.ply"))
    with open(os.path.join(exporter.job, "meshes", "sequence.json"), "w") as f:
        json.dump({"frames": []}, f)
    calls, labels = panel_labels()
    assert ("operator", "marble.export_sequence_usd") in calls and ("operator", "marble.export_textured") not in calls
    assert bpy.ops.marble.export_sequence_usd() == {'FINISHED'}
    run_ticks(exporter.jobs)
    with open(os.path.join(exporter.job, "export_argv.json")) as f:
        assert json.load(f)["argv"] == ["export", exporter.job, "--format", "usd"]
    assert state().state == 'done', state().message
    obj = bpy.data.objects["studio sequence cache"]
    assert list(obj.users_collection) == [bpy.data.collections["studio"]]
    assert state().message == "Imported the USD sequence sequence.usdc as 'studio sequence cache'"
    scene = bpy.context.scene
    assert (scene.frame_start, scene.frame_end) == (1, 3)
    known = np.array(truth(exporter)["world"])
    scene.frame_set(2)
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    co = np.array([v.co[:] for v in evaluated.data.vertices])
    assert np.allclose(co, known + [0.2, 0.0, 0.0], atol=1e-5)
    # Exported again: the new cache takes the old one's place and name.
    export(exporter, fmt="usd")
    assert state().state == 'done', state().message
    assert [o.name for o in bpy.data.objects if o.get("marble_usd")] == ["studio sequence cache"]
    assert len(bpy.data.cache_files) == 1


def test_export_events_in_the_job_state(tmp_path):
    """The reducer (no Blender): an export's events, live and replayed from events.jsonl after the
    training's (the export is the job's last run, so it is what shows)."""
    reducer = bpy_free("addon.jobs.reducer")
    events = [{"event": "stage", "name": "export"},
              {"event": "progress", "phase": "unwrap", "iteration": 1, "total": 4, "fraction": 0.45},
              {"event": "done", "outputs": {"export": "/j/meshes/mesh_textured.glb", "format": "glb",
                                            "vertices": 10, "faces": 16, "texture": None, "frame": None}}]
    live = types.SimpleNamespace()
    reducer.replay(live, "")
    reducer.begin(live, "/j", False, 0, kind="export")
    reducer.update_state(live, events[0])
    reducer.update_state(live, events[1])
    assert (live.kind, live.phase, live.iteration, live.total, live.progress) == ("export", "unwrap", 1, 4, 0.45)
    reducer.update_state(live, events[2])
    assert live.export_path == "/j/meshes/mesh_textured.glb" and live.progress == 1.0
    assert live.message == "Exported the textured mesh (16 faces): /j/meshes/mesh_textured.glb"
    reducer.update_state(live, {"event": "cancelled", "checkpoint": None, "iteration": None})
    assert live.message == "Export cancelled: nothing was written or imported" and not live.resumable

    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "step_0000004.pt").write_bytes(b"")
    training = [{"event": "started", "config": {}}, {"event": "progress", "iteration": 4, "total": 4},
                {"event": "done", "outputs": {"mesh": "/j/meshes/mesh.ply"}}]
    with open(job / "events.jsonl", "w") as f:
        f.write("".join(json.dumps(dict(e, t=0.0)) + "\n" for e in training + events))
    replayed = types.SimpleNamespace()
    assert reducer.replay(replayed, str(job))
    assert (replayed.state, replayed.kind, replayed.resumable) == ('done', 'export', False)
    assert replayed.message == "Exported the textured mesh (16 faces): /j/meshes/mesh_textured.glb"
    with open(job / "events.jsonl", "a") as f:  # an export interrupted with Blender: no final event
        f.write(json.dumps({"event": "stage", "name": "export", "t": 0.0}) + "\n")
    assert reducer.replay(replayed, str(job))
    assert (replayed.state, replayed.kind, replayed.resumable) == ('failed', 'export', False)
