"""A dynamic job spread over processes by torchrun (engine/train/ranks.py): how frames are shared out,
the plan a resume must match, what the ranks print, and two real processes on the CPU (gloo): the same
frames and meshes as one process, a killed rank survived and its frames trained on resume."""
import glob
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from engine_process import read_until, run_engine

from engine.config import InputError
from engine.events import Emitter, RankEmitter, emitter_for
from engine.io import protocol
from engine.io.ply import read_triangles
from engine.metrics import chamfer
from engine.train import ranks as spread


def test_later_frames_are_split_into_contiguous_chunks():
    frames = list(range(10, 20))
    assert spread.chunks(frames, 1) == [list(range(11, 20))]
    assert spread.chunks(frames, 2) == [[11, 12, 13, 14, 15], [16, 17, 18, 19]]
    assert spread.chunks(frames, 3) == [[11, 12, 13], [14, 15, 16], [17, 18, 19]]
    assert spread.chunks([0, 1], 3) == [[1], [], []]
    assert spread.chunks([0], 2) == [[], []]
    parts = spread.chunks(frames, 4)
    assert sum(parts, []) == frames[1:] and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_each_rank_goes_from_frame_0_through_guides_to_its_chunk():
    frames = [0, 1, 2, 3, 4, 5, 6]
    assert spread.rank_frames(frames, 2, 0) == ([0, 1, 2, 3], set())
    assert spread.rank_frames(frames, 2, 1) == ([0, 1, 2, 3, 4, 5, 6], {1, 2, 3})
    assert spread.rank_frames(frames, 3, 2) == ([0, 1, 2, 3, 4, 5, 6], {1, 2, 3, 4})
    assert spread.rank_frames([0, 1], 2, 1) == ([0], set())  # nothing left for it
    assert spread.rank_frames(frames, 1, 0) == (frames, set())


def test_torchrun_variables():
    assert not spread.Ranks.from_env({}).spread
    r = spread.Ranks.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (r.rank, r.world, r.local_rank, r.local_world, r.spread, r.leader) == (3, 4, 1, 2, True, False)
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"},
                {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}):
        with pytest.raises(InputError, match="RANK"):
            spread.Ranks.from_env(bad)


def test_a_resume_needs_the_processes_and_frames_of_the_plan(tmp_path):
    job = str(tmp_path)
    spread.write_plan(job, 2, [0, 1, 2, 3], resume=False)
    assert spread.read_plan_world(job) == 2
    spread.write_plan(job, 2, [0, 1, 2, 3], resume=True)
    with pytest.raises(InputError, match="--nproc-per-node 2"):
        spread.write_plan(job, 3, [0, 1, 2, 3], resume=True)
    with pytest.raises(InputError, match="frames 0 to 3"):
        spread.write_plan(job, 2, [0, 1, 2], resume=True)
    with open(os.path.join(job, protocol.RANKS_DIR, spread.PLAN_FILE), "w") as f:
        f.write("{")
    with pytest.raises(InputError, match="damaged plan"):
        spread.write_plan(job, 2, [0, 1, 2, 3], resume=True)
    assert spread.read_plan_world(str(tmp_path / "elsewhere")) == 1
    spread.check_single_resume(str(tmp_path / "elsewhere"), resume=True)
    spread.write_plan(job, 2, [0, 1, 2, 3], resume=False)
    spread.check_single_resume(job, resume=False)
    with pytest.raises(InputError, match="resume it under torchrun with --nproc-per-node 2"):
        spread.check_single_resume(job, resume=True)
    single = tmp_path / "single"
    os.makedirs(single / protocol.CHECKPOINTS_DIR)
    (single / protocol.CHECKPOINTS_DIR / "step_0000100.pt").write_bytes(b"")
    with pytest.raises(InputError, match="one process; resume it without torchrun"):
        spread.write_plan(str(single), 2, [0, 1, 2, 3], resume=True)


def test_rank_0_merges_the_other_ranks_frames(tmp_path):
    job = str(tmp_path)
    os.makedirs(spread.rank_dir(job, 1))
    os.makedirs(spread.rank_dir(job, 2))
    entry = lambda f: {"frame": f, "mesh": f"frame_{f:06d}.ply"}
    assert spread.merged_entries(job, 3, [entry(0), entry(1)]) == [entry(0), entry(1)]
    assert not spread.all_finished(job, 3)
    spread.write_rank_frames(job, 2, [entry(5)], finished=True)
    spread.write_rank_frames(job, 1, [entry(3), entry(2)], finished=False)
    assert [e["frame"] for e in spread.merged_entries(job, 3, [entry(1), entry(0)])] == [0, 1, 2, 3, 5]
    assert not spread.all_finished(job, 3)
    spread.write_rank_frames(job, 1, [entry(2), entry(3), entry(4)], finished=True)
    assert spread.all_finished(job, 3)


def test_ranks_after_0_print_only_frames_warnings_and_errors(tmp_path):
    stream = io.StringIO()
    out = RankEmitter(2, stream=stream)
    out.attach(str(tmp_path))
    for kind in (protocol.STARTED, protocol.PROGRESS, protocol.MESH, protocol.WARNING, protocol.DONE):
        out.emit(kind, frame=1)
    out.close()
    printed = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in printed] == [protocol.MESH, protocol.WARNING]
    assert all(e["rank"] == 2 for e in printed)
    kept = protocol.read_events(str(tmp_path / protocol.EVENTS_FILE))
    assert [e["event"] for e in kept] == [protocol.STARTED, protocol.PROGRESS, protocol.MESH, protocol.WARNING,
                                         protocol.DONE]
    assert type(emitter_for("train", {"RANK": "1", "WORLD_SIZE": "2"})) is RankEmitter
    for command, env in (("train", {"RANK": "0", "WORLD_SIZE": "2"}), ("train", {}), ("extract", {"RANK": "1", "WORLD_SIZE": "2"})):
        assert type(emitter_for(command, env)) is Emitter


# -- two processes on the CPU --------------------------------------------------------------------
FRAMES = 5
TRAIN = ["--iterations", "200", "--resolution", "48", "--frames", f"0:{FRAMES - 1}",
         "--set", "dynamic.frame_iterations=60", "--set", "dynamic.prediction_iterations=40",
         "--set", "train.rays_per_batch=384", "--set", "train.checkpoint_every=100000"]


def torchrun(args, log, processes=2):
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={processes}", "-m", "engine"] + args, cwd=REPO, env=env,
                            text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(log, "w"),
                            start_new_session=True)


def finish(proc, timeout):
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return [e for e in map(protocol.decode, stdout.splitlines()) if e is not None]


@pytest.fixture(scope="module")
def moving_torus(tmp_path_factory):
    from demo.dynamic_scene import render_dynamic_dataset
    folder = str(tmp_path_factory.mktemp("spread_torus"))
    render_dynamic_dataset(folder, frames=FRAMES, cameras=16, size=(48, 48), samples=8)
    return folder


@pytest.fixture(scope="module")
def spread_and_single(moving_torus, tmp_path_factory):
    """The same dynamic job with one process, and with two whose second is killed (SIGKILL) once its
    first frame is checkpointed, then resumed under torchrun."""
    base = tmp_path_factory.mktemp("spread")
    single = str(base / "single")
    code, single_events, err = run_engine(["train", "--data", moving_torus, "--out", single] + TRAIN, timeout=900)
    assert code == 0, err[-3000:]
    job = str(base / "spread")
    proc = torchrun(["train", "--data", moving_torus, "--out", job] + TRAIN, str(base / "first.log"))
    try:
        first = read_until(proc, protocol.MESH, timeout=900, match=lambda e: e.get("rank") == 1)
        rank_checkpoints = os.path.join(spread.rank_dir(job, 1), protocol.CHECKPOINTS_DIR, "step_*.pt")
        deadline = time.monotonic() + 120
        while not glob.glob(rank_checkpoints) and time.monotonic() < deadline:
            time.sleep(0.2)
        with open(os.path.join(spread.rank_dir(job, 1), ".marble.lock")) as f:
            os.kill(int(f.read()), signal.SIGKILL)
        first += finish(proc, timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    proc = torchrun(["train", "--data", moving_torus, "--out", job, "--resume"], str(base / "resume.log"))
    resumed = finish(proc, timeout=900)
    assert proc.returncode == 0, open(base / "resume.log").read()[-3000:]
    return single, single_events, job, first, resumed


@pytest.mark.slow
def test_a_killed_rank_is_survived_and_resume_trains_only_what_is_missing(spread_and_single):
    _, _, job, first, resumed = spread_and_single
    chunk = spread.chunks(list(range(FRAMES)), 2)[1]
    killed_after = next(e for e in first if e["event"] == protocol.MESH and e.get("rank") == 1)
    assert killed_after["frame"] == chunk[0]
    # Rank 0 was stopped by torchrun: it checkpointed and named the frames still missing.
    assert first[-1]["event"] == protocol.CANCELLED and first[-1].get("rank") is None
    warned = [e["message"] for e in first if e["event"] == protocol.WARNING and e.get("rank") is None]
    assert any("not trained yet" in w and str(chunk[-1]) in w for w in warned), warned
    assert not any(e["event"] == protocol.DONE for e in first)
    # The resume: rank 1 goes on after its checkpointed frame, nothing is trained twice.
    assert resumed[-1]["event"] == protocol.DONE and resumed[-1]["outputs"]["frames"] == FRAMES
    assert [e["frame"] for e in resumed if e["event"] == protocol.MESH] == chunk[1:]
    rank_events = protocol.read_events(os.path.join(spread.rank_dir(job, 1), protocol.EVENTS_FILE))
    restart = max(i for i, e in enumerate(rank_events) if e["event"] == protocol.STARTED)
    trained = [e["frame"] for e in rank_events[restart:]
               if e["event"] == protocol.STAGE and e["name"] == "train" and "frame" in e]
    assert trained == chunk[1:]


@pytest.mark.slow
def test_two_processes_give_the_frames_and_meshes_of_one(spread_and_single, moving_torus):
    single, single_events, job, _, _ = spread_and_single
    with open(os.path.join(job, protocol.MESHES_DIR, protocol.SEQUENCE_FILE)) as f:
        spread_frames = json.load(f)["frames"]
    with open(os.path.join(single, protocol.MESHES_DIR, protocol.SEQUENCE_FILE)) as f:
        single_frames = json.load(f)["frames"]
    assert [e["frame"] for e in spread_frames] == [e["frame"] for e in single_frames] == list(range(FRAMES))
    for a, b in zip(spread_frames, single_frames):
        spread_mesh = read_triangles(os.path.join(job, protocol.MESHES_DIR, a["mesh"]))
        single_mesh = read_triangles(os.path.join(single, protocol.MESHES_DIR, b["mesh"]))
        truth = read_triangles(os.path.join(moving_torus, "truth", f"frame_{a['frame']:06d}.ply"))
        # Rank 1's frames start from frame 0's weights: as close to the truth as one process's, within
        # this short budget's noise (about 1% of the diagonal at 48 px).
        errors = [chamfer(m[0], m[1], truth[0], truth[1], samples=4000) for m in (spread_mesh, single_mesh)]
        assert errors[0] < max(2.0 * errors[1], 0.015), (a["frame"], errors)


@pytest.mark.slow
def test_cancel_reaches_every_rank_and_a_waiting_rank_saves_nothing(moving_torus, tmp_path):
    """The add-on's Cancel (a `cancel` line on torchrun's stdin, read by one of the ranks) while rank 0
    trains frame 0 and rank 1 waits for it: the job ends cancelled with rank 0's checkpoint, and rank 1,
    which had nothing of its own yet, leaves no checkpoint (a resume starts it from frame 0's weights)."""
    job = str(tmp_path / "job")
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "-m", "engine", "train", "--data", moving_torus, "--out", job] + TRAIN, cwd=REPO,
                            env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "log", "w"), start_new_session=True)
    try:
        read_until(proc, protocol.PROGRESS, timeout=600)
        proc.stdin.write("cancel\n")
        proc.stdin.flush()
        events = finish(proc, timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    cancelled = [e for e in events if e["event"] == protocol.CANCELLED]
    assert cancelled and cancelled[-1].get("rank") is None and os.path.isfile(cancelled[-1]["checkpoint"])
    assert not glob.glob(os.path.join(spread.rank_dir(job, 1), protocol.CHECKPOINTS_DIR, "*.pt"))
    assert not os.path.exists(spread.first_frame_path(job))
