"""addon/jobs/reducer.py without Blender: what events, a start and an exit say about a job's state
(any object with wm.marble_job's attributes: here a SimpleNamespace). The job client's bpy-free
modules (process, engine_python) load without Blender too."""
import json
import math
import types

import pytest

from addon_conftest import bpy_free

reducer = bpy_free("addon.jobs.reducer")


def fresh():
    """wm.marble_job's defaults."""
    return types.SimpleNamespace(state='idle', progress=0.0, iteration=0, total=0, loss=0.0, psnr=0.0, eta_s=0.0,
                                 stage="", frame=-1, dynamic=False, frame_index=-1, frame_count=0, frames_done=0,
                                 phase="", sequence_path="", message="", job_dir="", mesh_path="", device="",
                                 resumable=False)


def test_other_modules_load_without_blender():
    for name in ("addon.jobs.process", "addon.engine_python"):
        bpy_free(name)


def test_a_static_job_from_start_to_done():
    state = fresh()
    reducer.begin(state, "/jobs/a", resume=False, total=100)
    assert (state.state, state.stage, state.total, state.job_dir) == ('running', "starting", 100, "/jobs/a")
    reducer.update_state(state, {"event": "started", "device": "cpu", "backend": "torch", "config": {}})
    reducer.update_state(state, {"event": "progress", "iteration": 30, "total": 120, "loss": 0.5, "psnr": 21.0,
                                 "eta_s": 9.0, "frame": None})
    assert state.device == "cpu, torch" and state.progress == pytest.approx(0.25) and state.total == 120
    assert (state.loss, state.psnr, state.eta_s, state.frame) == (0.5, 21.0, 9.0, -1)
    reducer.update_state(state, {"event": "progress", "iteration": True, "loss": "bad"})  # no numbers: kept
    assert state.iteration == 0 and state.loss == 0.5
    reducer.update_state(state, {"event": "warning", "message": "careful"})
    assert state.message == "careful"
    reducer.update_state(state, {"event": "done", "outputs": {"mesh": "/jobs/a/meshes/mesh.ply"}})
    assert state.mesh_path == "/jobs/a/meshes/mesh.ply" and state.progress == 1.0 and state.eta_s == 0.0
    assert state.state == 'running'  # 'done' once the mesh is in the scene (effects)


def test_a_dynamic_job_and_its_frames():
    state = fresh()
    reducer.update_state(state, {"event": "started", "dynamic": True, "frames": [7, 8, 9]})
    reducer.update_state(state, {"event": "stage", "name": "frame", "frame": 8, "index": 1, "count": 3})
    reducer.update_state(state, {"event": "stage", "name": "predict", "frame": 8})
    assert (state.frame, state.frame_index, state.frame_count, state.phase) == (8, 1, 3, "predict")
    assert reducer.frame_position(state) == "2 of 3" and reducer.PHASES[state.phase] == "predicting its motion"
    reducer.update_state(state, {"event": "progress", "iteration": 1, "total": 60, "frame": 8, "phase": "train",
                                 "sequence_progress": 0.5})
    assert state.progress == 0.5 and state.phase == "train"
    reducer.update_state(state, {"event": "mesh", "frame": 8, "path": "f.ply", "sequence": "/j/meshes/sequence.json"})
    assert state.sequence_path == "/j/meshes/sequence.json" and state.mesh_path == ""
    reducer.update_state(state, {"event": "cancelled", "checkpoint": "/j/last.pt", "iteration": 1, "frame": 8})
    assert state.state == 'cancelled' and state.resumable
    assert state.message == "Cancelled at frame 8, iteration 1; Resume goes on from the checkpoint"


def test_how_a_job_ended_without_a_final_event():
    state = fresh()
    reducer.ended(state, -9, resumable=True)
    assert state.state == 'failed' and "stopped by signal 9" in state.message and "Resume" in state.message
    reducer.ended(state, 1, tail="Traceback\nRuntimeError: boom", log_path="/j/engine.log")
    assert state.message.endswith("last lines of /j/engine.log:\nTraceback\nRuntimeError: boom")
    assert not state.resumable
    reducer.ended(state, 3, cancel_requested=True)
    assert state.state == 'cancelled' and "before confirming the cancel" in state.message
    reducer.ended(state, 3, failure="Frame 2's mesh cannot be imported", cancel_requested=True, resumable=True)
    assert (state.state, state.message, state.resumable) == ('failed', "Frame 2's mesh cannot be imported", True)


def test_replay_from_events(tmp_path):
    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    events = [{"event": "started", "t": 0.1, "device": "cpu", "backend": "torch", "config": {}},
              {"event": "progress", "t": 1.0, "iteration": 40, "total": 100, "frame": None}]
    (job / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    state = fresh()
    assert reducer.replay(state, str(job))
    assert state.state == 'failed' and "no checkpoint was saved" in state.message
    (job / "checkpoints" / "step_0000040.pt").write_bytes(b"x")
    assert reducer.replay(state, str(job))
    assert (state.state, state.resumable, state.message) == ('cancelled', True, "Interrupted at iteration 40; "
                                                             "Resume goes on from the last checkpoint")
    assert not reducer.replay(state, str(tmp_path / "gone"))
    assert state.state == 'idle' and "gone" in state.message
    assert not reducer.replay(state, "") and state.message == ""


# ---------------------------------------------------------------------------------------------
# Hostile events: figures no property can hold, huge messages, damaged events.jsonl (issue 15)

HOSTILE = (float("inf"), float("-inf"), float("nan"), 1e30, 1e300, 10 ** 30, -10 ** 30, 2 ** 31)


@pytest.mark.parametrize("value", HOSTILE)
def test_numbers_no_property_can_hold_are_skipped(value):
    """Infinity, NaN, 10^30 (as a float or an int) never reach the state: int(inf) raised, and an int
    beyond 32 bits overflows Blender's IntProperty in the tick, which killed the job client."""
    state = fresh()
    reducer.update_state(state, {"event": "progress", "iteration": 3, "total": 10, "loss": 0.5, "psnr": 20.0,
                                 "eta_s": 4.0, "frame": None})
    reducer.update_state(state, {"event": "progress", "iteration": value, "total": value, "loss": value,
                                 "psnr": value, "eta_s": value, "frame": value, "sequence_progress": value,
                                 "frame_index": value, "frame_count": value})
    for name in ("iteration", "total", "frame", "frame_index", "frame_count"):
        assert abs(getattr(state, name)) <= 2 ** 31 - 1, name
    for name in ("progress", "loss", "psnr", "eta_s"):
        number = getattr(state, name)
        assert math.isfinite(number) and abs(number) <= 1e30, name
    assert 0.0 <= state.progress <= 1.0 and state.total == 10  # a total that means nothing is not taken
    reducer.update_state(state, {"event": "cancelled", "checkpoint": None, "iteration": value})
    reducer.update_state(state, {"event": "done", "outputs": {"sequence": "/j/s.json", "frames": value}})
    assert abs(state.frames_done) <= 2 ** 31 - 1
    reducer.update_state(state, {"event": "stage", "name": "frame", "frame": value, "index": value, "count": value})
    assert abs(state.frame) <= 2 ** 31 - 1 and abs(state.frame_count) <= 2 ** 31 - 1


def test_huge_messages_are_cut_in_the_state():
    state = fresh()
    reducer.update_state(state, {"event": "error", "message": "boom " + "y" * (10 << 20)})
    assert state.state == 'failed' and state.message.startswith("boom yyy")
    assert len(state.message) < reducer.MAX_MESSAGE_CHARS + 200 and "the full text is in" in state.message
    reducer.update_state(state, {"event": "warning", "message": "w" * 50000})
    assert len(state.message) < reducer.MAX_MESSAGE_CHARS + 200
    reducer.ended(state, 1, tail="t" * 100000 + "\nlast line", log_path="/j/engine.log")
    assert len(state.message) < 2 * reducer.MAX_MESSAGE_CHARS + 400 and state.message.endswith("last line")
    assert reducer.bounded("short") == "short"
    once = reducer.bounded("z" * 10000)
    assert reducer.bounded(once) == once  # a text cut once (by the reader thread) is not cut again


def test_replay_of_a_binary_events_file_restores_what_it_can(tmp_path):
    """A binary or non-UTF-8 events.jsonl (a damaged or foreign job folder) raised UnicodeDecodeError
    from the add-on's load handler; now the readable events are shown and the damage is said."""
    import random
    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "step_0000040.pt").write_bytes(b"x")
    rng = random.Random(15)
    good = [{"event": "started", "t": 0.1, "device": "cpu", "backend": "torch", "config": {}},
            {"event": "progress", "t": 1.0, "iteration": 40, "total": 100, "frame": None, "loss": float("inf")}]
    data = (bytes(rng.randrange(256) for _ in range(4096)) + b"\n"
            + "".join(json.dumps(e) + "\n" for e in good).encode()
            + b"\xff\xfe\x80 not utf-8 \xc3\x28\n"
            + b'{"event": "done", "t": 2, "outputs": "not a dict"}\n'  # wrongly typed: still no crash
            + b'{"event": "progress", "iteration": ' + b"[" * 100000 + b"\n")  # deeper than json can go
    (job / "events.jsonl").write_bytes(data)
    state = fresh()
    assert reducer.replay(state, str(job))
    assert (state.iteration, state.total, state.device, state.state) == (40, 100, "cpu, torch", 'done')
    assert "is damaged" in state.message and "not UTF-8" in state.message and "nested too deeply" in state.message
    # Pure random bytes: nothing to show, no exception.
    (job / "events.jsonl").write_bytes(bytes(rng.randrange(256) for _ in range(65536)))
    assert reducer.replay(state, str(job))
    assert state.state == 'cancelled' and state.resumable and "is damaged" in state.message
