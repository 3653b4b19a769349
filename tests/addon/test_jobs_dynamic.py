"""A dynamic job seen from Blender: each finished frame appears as its mesh event arrives, and the job
ends with the sequence in place.

A stand-in `engine` (stand_in_dynamic_engine.py in a temporary package the add-on is pointed at, as in
test_jobs.py) speaks the dynamic event contract over real pipes and writes real PLYs (engine.io.ply)
and a real meshes/sequence.json. It trains one frame per "next" line on its stdin, so the test ticks
the job client between frames and checks the scene after each one; "cancel" stops it with a
checkpoint. What it does is read from a JSON plan ($MARBLE_FAKE_PLAN)."""
import json
import os
import re
import sys
import time

import bpy
import numpy as np
import pytest

from addon_conftest import similarity, stand_in_engine
from conftest import make_rig, ring_cameras


@pytest.fixture
def dynamic_engine(marble, tmp_path, monkeypatch):
    """A scene with an imported rig ("studio"), the job client pointed at the stand-in engine; gives
    marble plus plan(**plan) to set what the next run does."""
    # The stand-in writes real meshes (engine.io.ply, which needs engine.io.protocol).
    stand_in_engine(marble, tmp_path / "fake_root", "stand_in_dynamic_engine.py", monkeypatch,
                    io_modules=("ply.py", "protocol.py"))
    rig_path = make_rig(tmp_path, ring_cameras(count=2), name="studio")
    assert bpy.ops.marble.import_rig(filepath=rig_path) == {'FINISHED'}
    marble.prefs.preview_every = 0
    marble.prefs.python = sys.executable
    bpy.context.scene.marble.job_dir = str(tmp_path / "job")
    marble.job_dir = str(tmp_path / "job")
    plan_path = tmp_path / "plan.json"
    monkeypatch.setenv("MARBLE_FAKE_PLAN", str(plan_path))
    marble.plan = lambda **plan: plan_path.write_text(json.dumps(plan))
    return marble


def state():
    return bpy.context.window_manager.marble_job


def tick_until(jobs, until, timeout=20.0):
    """Call tick() as Blender's timer would until `until()` holds (or the job ends: then it must hold)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return
        if jobs.tick() is None:
            assert until(), f"the job ended ({state().state}: {state().message})"
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out ({state().state}: {state().message})")


def run_to_end(jobs, timeout=20.0):
    deadline = time.monotonic() + timeout
    while jobs.tick() is not None:
        assert time.monotonic() < deadline, "the job did not end in time"
        time.sleep(0.005)


def next_frame(jobs, frames_done, fails=False):
    """Let the engine train its next frame, and tick until the scene has `frames_done` frames (or, with
    `fails`, until the job failed)."""
    job = jobs.current_job()
    job.process.stdin.write("next\n")
    job.process.stdin.flush()
    tick_until(jobs, lambda: state().frames_done == frames_done or state().state == 'failed')
    assert (state().state == 'failed') == fails, state().message


def sequence_collection(name="studio sequence"):
    return bpy.data.collections[name]


def frames_of(collection):
    return sorted(o["marble_frame"] for o in collection.objects)


def shown(collection):
    """The frames whose objects are visible (viewport and render) at the scene's current frame."""
    return [o["marble_frame"] for o in collection.objects if not o.hide_viewport and not o.hide_render]


def check_current(collection, frames):
    """At the scene's current frame, as the tick left it (no frame change since): the right object shown."""
    f = bpy.context.scene.frame_current
    earlier = [x for x in frames if x <= f]
    assert shown(collection) == ([max(earlier)] if earlier and f <= max(frames) else []), f"frame {f}"


def check_visibility(collection, frames):
    """Exactly one object shown at each frame from the first to the last of `frames` (the latest one
    not after it), none outside, and the collection holds exactly `frames`."""
    frames = sorted(frames)
    assert frames_of(collection) == frames
    scene = bpy.context.scene
    for f in range(frames[0], frames[-1] + 1):
        scene.frame_set(f)
        assert shown(collection) == [max(x for x in frames if x <= f)], f"frame {f}"
    for f in (frames[0] - 1, frames[-1] + 1):
        scene.frame_set(f)
        assert shown(collection) == [], f"frame {f}"


def vertices_of(obj):
    co = np.zeros(len(obj.data.vertices) * 3, dtype=np.float32)
    obj.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


class Layout:
    """Stands in for a panel's UILayout (the bpy module draws no panels): records labels and bars."""

    def __init__(self, lines=None):
        self.lines = [] if lines is None else lines

    def label(self, text="", icon='NONE'):
        self.lines.append(text)

    def progress(self, factor=0.0, type='BAR', text=""):
        self.lines.append(("bar", round(factor, 6), text))

    def column(self, align=False):
        return Layout(self.lines)

    row = column

    def operator(self, idname, icon='NONE', text=""):
        self.lines.append(("operator", idname))
        return type("Properties", (), {})()


def draw_job_panel(marble):
    """The Job panel's lines as it would draw them now."""
    panel = sys.modules[marble.package + ".ui.panel"]
    layout = Layout()
    panel.MARBLE_PT_job.draw(type("Panel", (), {"layout": layout})(), bpy.context)
    return layout.lines


def orphans():
    """Meshes and actions nothing uses (what a half-made or half-removed frame would leave)."""
    return [m.name for m in bpy.data.meshes if m.users == 0] + [a.name for a in bpy.data.actions if a.users == 0]


def test_frames_appear_while_training(dynamic_engine):
    """Each frame appears when its mesh event is ticked, exactly one object visible at every frame of
    the finished range (gaps included); the panel's figures follow the sequence; done leaves the
    sequence.json frames, the scene's frame range and a message saying how many."""
    jobs, frames = dynamic_engine.jobs, [1, 2, 3, 5, 6, 8]
    dynamic_engine.plan(frames=frames, step=True)
    assert bpy.ops.marble.train() == {'FINISHED'}
    tick_until(jobs, lambda: state().frame_count == 6)
    assert state().dynamic and state().frames_done == 0

    next_frame(jobs, 1)
    scene = bpy.context.scene
    collection = sequence_collection()
    assert collection.name in bpy.data.collections["studio"].children  # where the static mesh would go
    assert [o.name for o in collection.objects] == ["studio sequence 000001"]
    assert scene.frame_current == 1 and shown(collection) == [1]  # visible now, before any frame change
    assert (scene.frame_start, scene.frame_end) == (1, 1)
    check_visibility(collection, [1])
    obj = collection.objects[0]
    assert len(obj.data.polygons) == 20 and "Color" in obj.data.color_attributes
    assert np.allclose(vertices_of(obj).mean(axis=0), [1.0, 0.0, 0.0], atol=1e-5)
    # The live preview works for dynamic jobs too.
    preview = bpy.data.objects[jobs.current_job().preview_name]
    assert preview.name in bpy.data.collections["studio"].objects and len(preview.data.polygons) == 20
    # The figures the Job panel shows.
    assert (state().frame, state().frame_index, state().frame_count, state().phase) == (1, 0, 6, "train")
    assert state().progress == pytest.approx(0.5 / 6) and state().iteration == 1 and state().total == 2
    assert state().sequence_path == os.path.join(dynamic_engine.job_dir, "meshes", "sequence.json")
    panel = sys.modules[dynamic_engine.package + ".ui.panel"]
    assert panel.frame_text(state()) == "Frame 1 (1 of 6)" and panel.phase_text(state()) == "Training"
    assert state().stage == "extract" and panel.stage_text(state()) == "extract"
    lines = draw_job_panel(dynamic_engine)
    assert lines[0] == "Running: extract" and lines[1][:2] == ("bar", round(0.5 / 6, 6))
    assert "Frame 1 (1 of 6): training" in lines and "Frames done: 1 of 6" in lines
    assert "Step in frame: 1 / 2" in lines and ("operator", "marble.cancel") in lines

    for count, frame in enumerate(frames[1:], start=2):
        scene.frame_set(frames[count - 2])  # watching the newest frame while the next one arrives
        next_frame(jobs, count)
        assert scene.frame_current == frames[count - 2]
        check_current(collection, frames[:count])
        assert state().state == 'running', state().message
        assert (state().frame, state().frame_index, state().phase) == (frame, count - 1, "train")
        assert state().progress == pytest.approx((count - 0.5) / 6)
        assert panel.frame_text(state()) == f"Frame {frame} ({count} of 6)"
        assert (scene.frame_start, scene.frame_end) == (1, frame)
        check_visibility(collection, frames[:count])
    assert len(bpy.data.meshes) == 7  # six frames and the preview

    run_to_end(jobs)
    assert state().state == 'done', state().message
    assert state().message == "Imported 6 frames (1 to 8) into 'studio sequence'"
    assert state().frames_done == 6 and state().progress == 1.0
    lines = draw_job_panel(dynamic_engine)
    assert lines[0] == "Done: extract" and lines[1][:2] == ("bar", 1.0) and "Frames done: 6 of 6" in lines
    assert "Frame 8 (6 of 6)" in lines and "Imported 6 frames (1 to 8) into 'studio" in lines  # wrapped
    assert not any(o.name.endswith("preview") for o in bpy.data.objects)
    assert (scene.frame_start, scene.frame_end) == (1, 8)
    check_visibility(collection, frames)
    assert len([c for c in bpy.data.collections if "sequence" in c.name]) == 1
    assert orphans() == []


def test_frames_out_of_order_and_sent_again(dynamic_engine, monkeypatch):
    """Frames arriving out of order slot in between their neighbours, a frame sent again replaces its
    object, and adding a frame keys only its own object and its predecessor's."""
    jobs = dynamic_engine.jobs
    order = [3, 1, 8, 5, 2, 6, 5]
    dynamic_engine.plan(frames=[1, 2, 3, 5, 6, 8], order=order, step=True)
    keyed = []
    real = dynamic_engine.blocks.keyframes

    def recording(id_block, data_path, *args, **kwargs):
        keyed.append(id_block.name)
        return real(id_block, data_path, *args, **kwargs)

    monkeypatch.setattr(dynamic_engine.blocks, "keyframes", recording)
    bpy.ops.marble.train()
    finished = []
    scene = bpy.context.scene
    for frame in order:
        if finished:
            scene.frame_set(min(finished))  # before the frames coming next, some of them
        keyed.clear()
        name = f"studio sequence {frame:06d}"
        again = frame in finished
        if again:  # the count stays: wait for the bigger second mesh instead
            job = jobs.current_job()
            job.process.stdin.write("next\n")
            job.process.stdin.flush()
            tick_until(jobs, lambda: vertices_of(bpy.data.objects[name])[:, 1].max() > 0.4)
        else:
            next_frame(jobs, len(finished) + 1)
            finished.append(frame)
        check_current(sequence_collection(), finished)
        check_visibility(sequence_collection(), finished)
        earlier = [f for f in finished if f < frame]
        # Keyed: the new object, and its predecessor (re-keyed to hide where it appears) unless it
        # replaced an object that already had its place.
        expected = {name} | ({f"studio sequence {max(earlier):06d}"} if earlier and not again else set())
        assert {re.sub(r"\.\d{3}$", "", n) for n in keyed} == expected, (frame, keyed)
    # The frame sent again: one object, with the second mesh (1.5 times as big), and no leftovers.
    obj = bpy.data.objects["studio sequence 000005"]
    assert obj.data.name == "studio sequence 000005"
    assert obj.animation_data.action.name == "studio sequence 000005 frames"
    extent = vertices_of(obj).max(axis=0) - vertices_of(obj).min(axis=0)
    assert extent[1] == pytest.approx(2 * 1.618034 * 0.2 * 1.5, rel=1e-4)
    assert len(sequence_collection().objects) == 6 and orphans() == []
    run_to_end(jobs)
    assert state().state == 'done', state().message
    check_visibility(sequence_collection(), [1, 2, 3, 5, 6, 8])
    assert orphans() == []


def test_canonical_frames_are_placed_per_frame(dynamic_engine):
    jobs = dynamic_engine.jobs
    matrices = {10: similarity(0.3, (0, 0, 1), (1.0, 2.0, -0.5), (1.0, 1.0, 1.0)),
                11: similarity(2.9, (1, -2, 0.5), (-3.25, 0.125, 4.0), (0.5, 0.5, 0.5)),
                13: similarity(-1.2, (0.3, 1, 1), (0.0, -7.5, 2.0), (-1.5, 0.75, 2.0))}  # a mirror
    dynamic_engine.plan(frames=[10, 11, 13], coordinates="canonical", step=True,
                        matrices={str(k): v.tolist() for k, v in matrices.items()})
    bpy.ops.marble.train()
    scene = bpy.context.scene

    def check(frames):
        collection = sequence_collection()
        check_visibility(collection, frames)
        for f in frames:
            scene.frame_set(f)
            obj = bpy.data.objects[f"studio sequence {f:06d}"]
            assert np.allclose(np.array(obj.matrix_world), matrices[f], atol=1e-5), f

    next_frame(jobs, 1)
    assert scene.frame_current == 10 and shown(sequence_collection()) == [10]  # moved into the range
    assert sequence_collection()["marble_coordinates"] == "canonical"
    check([10])
    next_frame(jobs, 2)
    check([10, 11])
    next_frame(jobs, 3)
    check([10, 11, 13])
    run_to_end(jobs)
    assert state().state == 'done', state().message
    check([10, 11, 13])
    assert (scene.frame_start, scene.frame_end) == (10, 13)


def test_bad_frame_fails_the_job_cleanly(dynamic_engine):
    """A frame whose mesh cannot be read fails the job with a message naming the file, stops the engine
    (which saves a checkpoint) and leaves the frames before it whole and nothing of the bad one."""
    jobs = dynamic_engine.jobs
    dynamic_engine.plan(frames=[1, 2, 3], bad=[2], step=True)
    bpy.ops.marble.train()
    next_frame(jobs, 1)
    next_frame(jobs, 2, fails=True)
    bad = os.path.join(dynamic_engine.job_dir, "meshes", "frame_000002.ply")
    assert state().state == 'failed' and bad in state().message, state().message
    run_to_end(jobs)  # the engine got "cancel" from the add-on and stopped
    assert state().state == 'failed' and bad in state().message and "Frame 2" in state().message
    assert state().resumable
    assert jobs.current_job() is None
    collection = sequence_collection()
    check_visibility(collection, [1])
    assert [o.name for o in bpy.data.objects if o.type == 'MESH'] == ["studio sequence 000001"]
    assert [m.name for m in bpy.data.meshes] == ["studio sequence 000001"]
    assert orphans() == []


def test_bad_first_frame_makes_nothing(dynamic_engine):
    jobs = dynamic_engine.jobs
    dynamic_engine.plan(frames=[4, 5], bad=[4], step=True)
    bpy.ops.marble.train()
    next_frame(jobs, 1, fails=True)
    run_to_end(jobs)
    assert state().state == 'failed' and "frame_000004.ply" in state().message
    assert "studio sequence" not in bpy.data.collections
    assert not any(o.type == 'MESH' for o in bpy.data.objects) and len(bpy.data.meshes) == 0
    assert orphans() == []


def test_done_leaves_exactly_the_sequence_frames(dynamic_engine):
    """At done the collection is made to match sequence.json: a frame it lists but never announced is
    added, a frame it no longer lists is removed (and its predecessor shows in its place)."""
    jobs = dynamic_engine.jobs
    dynamic_engine.plan(frames=[1, 2, 3, 4], silent=[3], drop_at_end=[4])
    bpy.ops.marble.train()
    run_to_end(jobs)
    assert state().state == 'done', state().message
    assert state().message == "Imported 3 frames (1 to 3) into 'studio sequence'"
    check_visibility(sequence_collection(), [1, 2, 3])
    scene = bpy.context.scene
    assert (scene.frame_start, scene.frame_end) == (1, 3)
    assert orphans() == []


def test_resumed_job_shows_frames_from_sequence_json(dynamic_engine):
    """A cancelled dynamic job resumed in a new session (its collection was not saved): the frames it
    finished before come from sequence.json when the resumed run starts; the rest arrive as usual."""
    jobs, scene = dynamic_engine.jobs, bpy.context.scene
    dynamic_engine.plan(frames=[1, 2, 3, 4], step=True)
    bpy.ops.marble.train()
    next_frame(jobs, 1)
    next_frame(jobs, 2)
    assert bpy.ops.marble.cancel() == {'FINISHED'}
    run_to_end(jobs)
    assert state().state == 'cancelled' and state().resumable
    assert "Cancelled at frame 3" in state().message  # the frame it was about to train
    # A new session: the collection is gone, the job state comes from events.jsonl.
    collection = sequence_collection()
    for obj in list(collection.objects):
        bpy.data.objects.remove(obj)
    bpy.data.collections.remove(collection)
    for block in list(bpy.data.meshes) + list(bpy.data.actions):
        getattr(bpy.data, "meshes" if isinstance(block, bpy.types.Mesh) else "actions").remove(block)
    jobs.restore_state(scene, state())
    assert (state().state, state().dynamic, state().frames_done, state().frame_count) == ('cancelled', True, 2, 4)
    assert state().resumable and bpy.ops.marble.resume.poll()

    assert bpy.ops.marble.resume() == {'FINISHED'}
    tick_until(jobs, lambda: state().frames_done == 2 and "studio sequence" in bpy.data.collections)
    check_visibility(sequence_collection(), [1, 2])
    next_frame(jobs, 3)
    check_visibility(sequence_collection(), [1, 2, 3])
    next_frame(jobs, 4)
    run_to_end(jobs)
    assert state().state == 'done', state().message
    assert state().message == "Imported 4 frames (1 to 4) into 'studio sequence'"
    check_visibility(sequence_collection(), [1, 2, 3, 4])
    with open(os.path.join(dynamic_engine.job_dir, "runs.txt")) as f:
        assert f.read().split() == ["fresh", "resume"]


def test_save_reload_resume_and_restore(dynamic_engine, tmp_path):
    """Visibility per frame survives saving and reopening the .blend; the reopened file shows the job's
    state; Resume goes on in the same collection; a done job's state (with its sequence) shows again
    after another reload."""
    jobs = dynamic_engine.jobs
    dynamic_engine.plan(frames=[2, 3, 5], step=True)
    bpy.ops.marble.train()
    next_frame(jobs, 1)
    next_frame(jobs, 2)
    bpy.ops.marble.cancel()
    run_to_end(jobs)
    blend = str(tmp_path / "dynamic.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    bpy.ops.wm.read_homefile(use_empty=True)
    assert "studio sequence" not in bpy.data.collections
    bpy.ops.wm.open_mainfile(filepath=blend)
    assert (state().state, state().dynamic, state().frames_done, state().frame_count) == ('cancelled', True, 2, 3)
    assert state().resumable
    check_visibility(sequence_collection(), [2, 3])

    assert bpy.ops.marble.resume() == {'FINISHED'}
    next_frame(jobs, 3)
    run_to_end(jobs)
    assert state().state == 'done', state().message
    assert [c.name for c in bpy.data.collections if "sequence" in c.name] == ["studio sequence"]
    check_visibility(sequence_collection(), [2, 3, 5])
    assert orphans() == []

    bpy.ops.wm.save_as_mainfile(filepath=blend)
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=blend)
    sequence = os.path.join(dynamic_engine.job_dir, "meshes", "sequence.json")
    assert (state().state, state().dynamic, state().frames_done, state().sequence_path) == ('done', True, 3, sequence)
    assert state().message == f"Finished: 3 frames; sequence: {sequence}"
    assert state().progress == 1.0
    scene = bpy.context.scene
    assert (scene.frame_start, scene.frame_end) == (2, 5)
    check_visibility(sequence_collection(), [2, 3, 5])
    # The Results panel's Import Sequence opens its file browser on the job's sequence.json, and imports it.
    assert bpy.types.MARBLE_OT_import_sequence.start_file(None, bpy.context) == sequence
    assert bpy.ops.marble.import_sequence(filepath=sequence) == {'FINISHED'}
    check_visibility(bpy.data.collections["job"], [2, 3, 5])


def test_static_progress_and_restore_are_unchanged(marble, tmp_path):
    """update_state keeps the static job's meaning (bar = iteration / total, no frame) and reads a dynamic
    job's figures; restore_state shows an interrupted dynamic job with its frame."""
    jobs, job_state = marble.jobs, state()
    marble.jobs.reducer.update_state(job_state, {"event": "progress", "iteration": 30, "total": 120, "frame": None})
    assert job_state.progress == pytest.approx(0.25) and job_state.frame == -1 and not job_state.dynamic
    job = tmp_path / "job"
    (job / "meshes").mkdir(parents=True)
    events = [{"event": "started", "t": 0.1, "device": "cpu", "backend": "torch", "config": {}, "dynamic": True,
               "frames": [7, 8, 9], "coordinates": "world"},
              {"event": "stage", "t": 0.2, "name": "frame", "frame": 8, "index": 1, "count": 3},
              {"event": "stage", "t": 0.3, "name": "predict", "frame": 8},
              {"event": "progress", "t": 1.0, "iteration": 5, "total": 50, "frame": 8, "frame_index": 1,
               "frame_count": 3, "phase": "predict", "sequence_progress": 0.4, "eta_s": 3.0, "loss": 0.1}]
    (job / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (job / "meshes" / "sequence.json").write_text(json.dumps({"frames": [{"frame": 7, "mesh": "frame_000007.ply"}]}))
    bpy.context.scene.marble.last_job = str(job)
    assert jobs.restore_state(bpy.context.scene, job_state)
    assert (job_state.state, job_state.frame, job_state.frame_index, job_state.frame_count) == ('failed', 8, 1, 3)
    assert job_state.phase == "predict" and job_state.progress == pytest.approx(0.4) and job_state.frames_done == 1
    assert job_state.message.startswith("Interrupted at frame 8 (2 of 3), iteration 5")
    panel = sys.modules[marble.package + ".ui.panel"]
    assert panel.frame_text(job_state) == "Frame 8 (2 of 3)" and panel.phase_text(job_state) == "Predicting its motion"
    marble.jobs.reducer.update_state(job_state, {"event": "progress", "iteration": 1, "total": 60, "frame": 8, "phase": "train",
                                  "frame_index": 1, "frame_count": 3, "sequence_progress": 0.5})
    assert job_state.stage == "predict" and panel.stage_text(job_state) == "train"  # no stage event for it
