"""`python -m engine train` on a dynamic rig: the synthetic moving, deforming torus (demo.dynamic_scene)
trained frame by frame, cancelled mid-sequence and resumed; its events, meshes and sequence.json
against the true surfaces and motion; frame ranges and their errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, make_rig, ring_cameras
from engine_process import assert_one_error, read_until, run_engine

from engine.io import protocol
from engine.train.motion import rotation_error_deg
from engine.io.ply import read_triangles

FRAMES = 3
# Short budgets: enough to place every frame and follow the motion, not to reach the benchmark's accuracy.
TRAIN = ["--iterations", "200", "--resolution", "48", "--frames", f"0:{FRAMES - 1}",
         "--set", "dynamic.frame_iterations=60", "--set", "dynamic.prediction_iterations=40",
         "--set", "train.rays_per_batch=384", "--set", "train.checkpoint_every=100000"]


@pytest.fixture(scope="module")
def moving_torus(tmp_path_factory):
    """8 frames of the synthetic dynamic scene, 16 cameras at 48 px (the tests train the first 3)."""
    from demo.dynamic_scene import render_dynamic_dataset
    folder = str(tmp_path_factory.mktemp("moving_torus"))
    render_dynamic_dataset(folder, frames=8, cameras=16, size=(48, 48), samples=8)
    with open(os.path.join(folder, "truth", "motion.json"), encoding="utf-8") as f:
        return folder, json.load(f)


@pytest.fixture(scope="module")
def resumed(moving_torus, tmp_path_factory):
    """A dynamic job cancelled as soon as its first frame's mesh is out, then resumed to the end:
    (job, the first run's events, the resumed run's events)."""
    folder, _ = moving_torus
    job = str(tmp_path_factory.mktemp("dynamic_job") / "job")
    proc = start_engine(["train", "--data", folder, "--out", job] + TRAIN, job + ".log")
    first = read_until(proc, protocol.MESH, timeout=900)
    proc.stdin.write("cancel\n")
    proc.stdin.flush()
    first += read_until(proc, protocol.CANCELLED, timeout=300)
    proc.wait(timeout=120)
    assert proc.returncode == protocol.EXIT_CANCELLED
    assert os.path.isfile(first[-1]["checkpoint"])  # (the resumed run prunes it later)
    code, events, err = run_engine(["train", "--data", folder, "--out", job, "--resume"], timeout=900)
    assert code == 0, err[-3000:]
    return job, first, events


def start_engine(args, log):
    """The engine with a stdin to cancel through and its log in a file (a pipe nobody reads fills up)."""
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "engine"] + args, cwd=REPO, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"))


def bbox_center_error(vertices, truth, scene_size):
    """How far apart two surfaces' bounding-box centres are, in scene sizes (the object moves about
    0.03 per frame)."""
    center = lambda v: (v.min(0) + v.max(0)) / 2
    return float(np.linalg.norm(center(vertices) - center(truth)) / scene_size)


@pytest.mark.slow
def test_a_dynamic_rig_trains_frame_by_frame_and_resumes_mid_sequence(resumed, moving_torus):
    folder, motion = moving_torus
    job, first, events = resumed
    started = first[0]
    assert started["event"] == protocol.STARTED and started["dynamic"] is True
    assert started["frames"] == list(range(FRAMES)) and started["coordinates"] == "world"
    assert [e["frame"] for e in first if e["event"] == protocol.MESH] == [0]
    cancelled = first[-1]
    assert cancelled["event"] == protocol.CANCELLED and cancelled["frame"] == 1

    # The resumed run goes on with frame 1: frame 0 is not trained again.
    frame_stages = [e for e in events if e["event"] == protocol.STAGE and e["name"] == "frame"]
    assert [(e["frame"], e["index"], e["count"]) for e in frame_stages] == [(f, f, FRAMES) for f in range(1, FRAMES)]
    predicts = [e["frame"] for e in events if e["event"] == protocol.STAGE and e["name"] == "predict"]
    assert predicts == list(range(1, FRAMES))
    meshes = [e for e in first + events if e["event"] == protocol.MESH]
    assert [e["frame"] for e in meshes] == list(range(FRAMES))
    assert [e["iteration"] for e in meshes] == [200] + [60] * (FRAMES - 1)
    assert all(e["seconds"] > 0 and np.isfinite(e["loss"]) and e["coordinates"] == "world" for e in meshes)
    progress = [e for e in events if e["event"] == protocol.PROGRESS]
    overall = [e["sequence_progress"] for e in progress]
    assert overall == sorted(overall) and overall[-1] == 1.0 and overall[0] > 200 / (200 + 2 * 100)
    assert {e["phase"] for e in progress} == {"predict", "train"}
    assert {(e["frame"], e["frame_index"], e["frame_count"]) for e in progress} == {(f, f, FRAMES)
                                                                                   for f in range(1, FRAMES)}
    assert events[-1]["event"] == protocol.DONE
    outputs = events[-1]["outputs"]
    assert outputs["frames"] == FRAMES and outputs["sequence"] == meshes[-1]["sequence"]

    with open(outputs["sequence"], encoding="utf-8") as f:
        sequence = json.load(f)
    assert sequence["coordinates"] == "world"
    assert [e["frame"] for e in sequence["frames"]] == list(range(FRAMES))
    assert np.allclose(sequence["frames"][0]["world_from_canonical"], np.eye(4))
    for entry, event in zip(sequence["frames"], meshes):
        assert os.path.join(os.path.dirname(outputs["sequence"]), entry["mesh"]) == event["path"]
        assert entry["seconds"] == event["seconds"]
        assert np.allclose(entry["world_from_canonical"], event["world_from_canonical"])
        # The frame's mesh lies where the object is at that frame, not where it was at frame 0.
        vertices, faces, _ = read_triangles(event["path"])
        truth, _, _ = read_triangles(os.path.join(folder, "truth", f"frame_{entry['frame']:06d}.ply"))
        assert len(faces) > 100 and bbox_center_error(vertices, truth, motion["scene_size"]) < 0.015
    # The predicted motion follows the true one (8 degrees a frame), roughly on these short budgets.
    last = np.array(sequence["frames"][-1]["world_from_canonical"])
    true_last = np.array(motion["frames"][FRAMES - 1]["world_from_canonical"])
    true_angle = rotation_error_deg(np.eye(3), true_last[:3, :3])
    assert rotation_error_deg(last[:3, :3], true_last[:3, :3]) < 0.5 * true_angle


def test_frame_ranges_that_select_nothing_are_refused(moving_torus, tmp_path):
    folder, _ = moving_torus
    code, events, err = run_engine(["train", "--data", folder, "--out", str(tmp_path / "a"), "--frames", "20:30"])
    assert_one_error(code, events, err, "--frames 20:30", "no frame in that range", folder)
    code, events, err = run_engine(["train", "--data", folder, "--out", str(tmp_path / "b"), "--frames", "3:1"])
    assert_one_error(code, events, err, "the last frame comes before the first")
    static = make_rig(tmp_path, ring_cameras(count=4, width=24, height=20, focal=30.0), name="static")
    code, events, err = run_engine(["train", "--data", static, "--out", str(tmp_path / "c"), "--frames", "0:2"])
    assert_one_error(code, events, err, "not a dynamic rig")


@pytest.mark.slow
def test_extract_and_evaluate_explain_that_a_dynamic_job_writes_its_meshes_per_frame(resumed):
    job, _, _ = resumed
    for command in ("extract", "evaluate"):
        code, events, err = run_engine([command, job])
        assert_one_error(code, events, err, "a dynamic job", protocol.MESHES_DIR)
