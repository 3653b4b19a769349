"""addon/jobs/reducer.py without Blender: what events, a start and an exit say about a job's state
(any object with wm.marble_job's attributes: here a SimpleNamespace). The job client's bpy-free
modules (process, engine_python) load without Blender too."""
import json
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
