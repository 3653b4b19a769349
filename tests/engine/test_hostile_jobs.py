"""Issue 15, the engine's side: job folders with one owner and no stale state, damaged or hostile
job files, a full disk, bad command lines and inputs refused before work starts, cancel at any stage.
Each case ends with one `error` event (exit 2 for bad input) or the documented fallback."""
import errno
import io
import os
import signal
import stat
import threading

import pytest
import torch
from conftest import make_rig, ring_cameras
from engine_process import assert_one_error, engine, read_until, run_engine

from engine.config import RANGES, InputError, preset
from engine.events import Emitter
from engine.io import protocol
from engine.jobdir import JobLock
from engine.train import checkpoints

TINY = ["--iterations", "4", "--resolution", "16", "--set", "train.checkpoint_every=2"]


@pytest.fixture
def tiny_rig(tmp_path):
    return make_rig(tmp_path, ring_cameras(count=4, width=24, height=20, focal=30.0), name="tiny")


@pytest.fixture
def trained(tmp_path, tiny_rig):
    """A finished tiny job with two checkpoints (steps 2 and 4)."""
    job = str(tmp_path / "job")
    code, events, err = run_engine(["train", "--data", tiny_rig, "--out", job] + TINY)
    assert code == 0, err
    assert [os.path.basename(p) for p in checkpoints.checkpoints(job)] == ["step_0000002.pt", "step_0000004.pt"]
    return job


class Payload:
    """Unpickling this writes a file: what a hostile checkpoint would do."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --------------------------------------------------------------------------------------------
# No file runs code

@pytest.mark.parametrize("command", ["extract", "resume"])
def test_a_checkpoint_with_a_pickle_payload_runs_nothing(tmp_path, tiny_rig, trained, command):
    marker = str(tmp_path / "pwned")
    newest = checkpoints.latest_checkpoint(trained)
    state = torch.load(newest, weights_only=True)
    state["model"] = Payload(marker)
    torch.save(state, newest)
    args = (["extract", trained] if command == "extract" else
            ["train", "--data", tiny_rig, "--out", trained, "--resume"] + TINY)
    assert_one_error(*run_engine(args), newest, "would run code")
    assert not os.path.exists(marker)


# --------------------------------------------------------------------------------------------
# One owner per job folder; no stale state

def test_a_second_engine_on_the_same_folder_ends_at_once_naming_the_first(tmp_path, tiny_rig):
    job = tmp_path / "job"
    job.mkdir()
    lock = JobLock(str(job)).acquire()  # this test process plays the first engine
    try:
        assert_one_error(*run_engine(["train", "--data", tiny_rig, "--out", str(job)] + TINY),
                         "another Marble engine", f"process {os.getpid()}")
    finally:
        lock.release()
    assert not os.path.exists(job / protocol.CHECKPOINTS_DIR)
    code, _, err = run_engine(["train", "--data", tiny_rig, "--out", str(job)] + TINY)  # released: runs
    assert code == 0, err


def test_atomic_writes_never_share_a_temporary_name(tmp_path):
    path = str(tmp_path / "file.json")
    errors = []

    def writer(n):
        try:
            for i in range(50):
                protocol.write_atomic(path, f"{n} {i}\n" * 1000)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert os.listdir(tmp_path) == ["file.json"]
    lines = open(path).read().splitlines()
    assert len(lines) == 1000 and len(set(lines)) == 1  # one writer's whole content


def test_a_folder_holding_a_job_is_refused_without_resume_or_overwrite(tmp_path, tiny_rig, trained):
    other = make_rig(tmp_path, ring_cameras(count=5, width=24, height=20, focal=30.0), name="other")
    assert_one_error(*run_engine(["train", "--data", other, "--out", trained] + TINY), trained,
                     "holds an earlier job", "--resume", "--overwrite")
    stale = os.path.join(trained, protocol.CHECKPOINTS_DIR, "step_0009999.pt")
    open(stale, "wb").close()
    code, events, err = run_engine(["train", "--data", other, "--out", trained, "--overwrite"] + TINY)
    assert code == 0, err
    assert not os.path.exists(stale)  # the earlier job's checkpoints are gone, not winning by name
    started = [e for e in protocol.read_events(os.path.join(trained, protocol.EVENTS_FILE))
               if e["event"] == protocol.STARTED]
    assert len(started) == 1 and started[0]["data"] == other


@pytest.mark.parametrize("damage", [b"", b"garbage" * 100, "truncate"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_intact_one(trained, damage):
    newest = checkpoints.latest_checkpoint(trained)
    content = open(newest, "rb").read()
    with open(newest, "wb") as f:
        f.write(content[: len(content) // 2] if damage == "truncate" else damage)
    code, events, err = run_engine(["extract", trained])
    assert code == 0, err
    warnings = [e["message"] for e in events if e["event"] == protocol.WARNING]
    assert any(newest in w and "checkpoint before it" in w for w in warnings), warnings
    assert events[-1]["event"] == protocol.DONE


@pytest.mark.parametrize("name,content,expected", [
    (protocol.CONFIG_FILE, b'{"preset": "cpu", "encod', "not valid JSON"),
    (protocol.CONFIG_FILE, b'[1, 2]', "expected a JSON object"),
    (protocol.CONFIG_FILE, b'{"preset": "cpu", "encoding": 5}', "damaged job configuration"),
    (protocol.NORMALIZATION_FILE, b'{"center": [0, 0, 0], "radius": 0}', "radius 0"),
    (protocol.NORMALIZATION_FILE, b'{"center": "x", "radius": 1}', "'center' must be 3 numbers"),
])
def test_damaged_job_files_are_named(tiny_rig, trained, name, content, expected):
    path = os.path.join(trained, name)
    with open(path, "wb") as f:
        f.write(content)
    args = ["train", "--data", tiny_rig, "--out", trained, "--resume"] + TINY
    assert_one_error(*run_engine(args), path, expected)


def test_a_full_disk_leaves_no_partial_checkpoint_and_keeps_the_previous(tmp_path, monkeypatch):
    job = str(tmp_path)
    os.makedirs(os.path.join(job, protocol.CHECKPOINTS_DIR))
    first = checkpoints.save_checkpoint(job, 1, {"step": 1, "model": {}})

    def full(state, f):
        f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(checkpoints.DiskFull, match="no space left.*previous checkpoints are intact"):
        checkpoints.save_checkpoint(job, 2, {"step": 2, "model": {}})
    assert os.listdir(os.path.join(job, protocol.CHECKPOINTS_DIR)) == [os.path.basename(first)]
    monkeypatch.undo()
    assert torch.load(first, weights_only=True)["step"] == 1


def test_a_full_disk_stops_the_event_log_not_the_events(tmp_path):
    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    stream = io.StringIO()
    out = Emitter(stream=stream)
    out.file = Full()
    out.emit(protocol.WARNING, message="one")
    out.emit(protocol.WARNING, message="two")
    assert [protocol.decode(line)["message"] for line in stream.getvalue().splitlines()] == ["one", "two"]


@pytest.mark.parametrize("where", ["file", "below a file", "read-only"])
def test_an_unusable_out_folder_is_refused(tmp_path, tiny_rig, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    out = {"file": blocker, "below a file": blocker / "job", "read-only": readonly / "job"}[where]
    if where == "read-only":
        os.chmod(readonly, stat.S_IRUSR | stat.S_IXUSR)
        if os.access(readonly, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
    try:
        assert_one_error(*run_engine(["train", "--data", tiny_rig, "--out", str(out)] + TINY), "--out")
    finally:
        os.chmod(readonly, stat.S_IRWXU)


# --------------------------------------------------------------------------------------------
# Inputs checked before work starts

@pytest.mark.parametrize("region,expected", [
    (["40", "40", "40", "0.5"], "in view of 0 of the 4 cameras"),
    (["0", "0", "0", "1e30"], "holds 4 of the 4 cameras"),
    (["0", "0", "0", "1e-30"], "pixels in radius"),
    (["0", "0", "0", "0.01"], "pixels in radius"),
])
def test_a_region_the_cameras_cannot_see_is_refused_before_training(tmp_path, tiny_rig, region, expected):
    job = tmp_path / "job"
    assert_one_error(*run_engine(["train", "--data", tiny_rig, "--out", str(job), "--region"] + region + TINY),
                     "--region", expected)
    assert not job.exists()


def test_a_region_centre_in_exponent_notation_is_a_number(tmp_path, tiny_rig):
    code, events, err = run_engine(["train", "--data", tiny_rig, "--out", str(tmp_path / "job"),
                                    "--region", "-1e-05", "0", "0", "1"] + TINY)
    assert code == 0, err
    train = next(e for e in events if e["event"] == protocol.STAGE and e["name"] == "train")
    assert train["region"]["center"][0] == pytest.approx(-1e-05)


@pytest.mark.parametrize("assignment", ["train.lr=nan", "train.lr=-1", "render.background=nan",
                                        "render.occupancy_resolution=0", "network.sdf_hidden=0",
                                        "train.checkpoint_every=-1", "data.downscale=1000",
                                        "render.samples_per_ray=100000000", "train.lr=inf"])
def test_set_values_outside_their_range_are_refused_naming_field_value_and_range(assignment):
    key, _, value = assignment.partition("=")
    with pytest.raises(InputError) as caught:
        preset("cpu").set(assignment)
    message = str(caught.value)
    assert key in message and f"got {float(value) if '.' in message.split('got ')[-1] else value}" in message, message
    assert "finite" in message or "positive" in message or str(RANGES[key][0]) in message, message


def test_every_number_of_the_configuration_has_a_range():
    import dataclasses
    cfg = preset("cpu")
    numbers = {f"{section}.{f.name}" for section in ("encoding", "network", "render", "train", "mesh", "data",
                                                      "dynamic", "export")
               for f in dataclasses.fields(getattr(cfg, section))
               if type(getattr(getattr(cfg, section), f.name)) in (int, float)}
    assert numbers - set(RANGES) == set()
    for name in ("cpu", "fast", "quality"):
        preset(name).validate()


@pytest.mark.parametrize("args,expected", [
    (["extract", "JOB", "--resolution", "0"], "--resolution must be between 8 and 2048, got 0"),
    (["extract", "JOB", "--resolution", "1"], "--resolution must be between 8 and 2048, got 1"),
    (["extract", "JOB", "--resolution", "-5"], "--resolution must be between 8 and 2048, got -5"),
    (["extract", "JOB", "--resolution", "100000"], "got 100000"),
    (["evaluate", "JOB", "--downscale", "-1"], "--downscale must be between 1 and 64, got -1"),
    (["train", "--data", "RIG"], "required: --out"),
    (["train", "--data", "RIG", "--out", "JOB", "--preset", "huge"], "invalid choice: 'huge'"),
    (["nonsense"], "invalid choice"),
])
def test_every_command_line_error_is_an_error_event(tmp_path, args, expected):
    args = [str(tmp_path / "job") if a == "JOB" else str(tmp_path / "rig") if a == "RIG" else a for a in args]
    assert_one_error(*run_engine(args), expected)


@pytest.mark.parametrize("count,same,expected", [(1, False, "1 view"), (8, True, "same place")])
def test_cameras_that_cannot_reconstruct_are_refused(tmp_path, count, same, expected):
    cams = ring_cameras(count=count, width=24, height=20, focal=30.0)
    if same:
        cams = [dict(cams[0], image=f"cam_{i:02d}") for i in range(count)]
    rig = make_rig(tmp_path, cams, name="rig")
    assert_one_error(*run_engine(["train", "--data", rig, "--out", str(tmp_path / "job")] + TINY), expected)


def test_cameras_looking_away_see_no_region(tmp_path):
    import numpy as np
    cams = ring_cameras(count=6, width=24, height=20, focal=30.0)
    for cam in cams:  # turn each camera around: it looks outwards
        c2w = np.array(cam["c2w"])
        c2w[:3, 0], c2w[:3, 2] = -c2w[:3, 0], -c2w[:3, 2]
        cam["c2w"] = c2w
    rig = make_rig(tmp_path, cams, name="rig")
    assert_one_error(*run_engine(["train", "--data", rig, "--out", str(tmp_path / "job"), "--region", "0", "0",
                                  "0", "1"] + TINY), "in view of 0 of the 6 cameras")


def test_a_downscale_too_large_for_the_images_says_so(tmp_path, tiny_rig):
    assert_one_error(*run_engine(["train", "--data", tiny_rig, "--out", str(tmp_path / "job"), "--downscale", "4"]
                                 + TINY), "24x20 images 6x5 pixels", "at most 2")


def test_a_binary_event_log_is_read_around(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    good = protocol.encode(protocol.make_event(protocol.PROGRESS, 1.0, iteration=1, total=2, loss=0.5))
    (job / protocol.EVENTS_FILE).write_bytes(os.urandom(2000) + b"\n" + good.encode() + b"\n\xff\xfe\n")
    assert [e["event"] for e in protocol.read_events(str(job / protocol.EVENTS_FILE))] == [protocol.PROGRESS]
    code, events, err = run_engine(["curves", str(job)])
    assert code == 0, err
    assert events[-1]["event"] == protocol.DONE


# --------------------------------------------------------------------------------------------
# Cancel at any stage

def test_extraction_stops_within_a_chunk_when_cancelled():
    from engine.extract import extract_mesh
    calls = []

    class Stop(Exception):
        pass

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise Stop()

    with pytest.raises(Stop):
        extract_mesh(lambda p: p.norm(dim=-1) - 0.5, 96, block=32, chunk=4096, check=check)
    assert len(calls) == 3


def test_sigterm_right_after_started_cancels_with_an_event(tmp_path, tiny_rig):
    proc = engine(["train", "--data", tiny_rig, "--out", str(tmp_path / "job"), "--iterations", "100000"])
    read_until(proc, protocol.STARTED)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    events = [protocol.decode(line) for line in out.splitlines() if line.strip()]
    assert proc.returncode == protocol.EXIT_CANCELLED, err
    assert events[-1]["event"] == protocol.CANCELLED


def test_a_region_beside_the_masked_object_is_refused_before_training(tmp_path):
    """The masks show a small disc around the origin; a region every camera sees, but above the object,
    holds no point inside every silhouette: refused before training (it once crashed at extraction)."""
    import numpy as np
    from PIL import Image
    cams = ring_cameras(count=4, width=64, height=48, focal=60.0)
    rig = make_rig(tmp_path, cams, name="masked")
    yy, xx = np.mgrid[0:48, 0:64]
    alpha = (((xx + 0.5 - 32) ** 2 + (yy + 0.5 - 24) ** 2) <= 9).astype(np.uint8) * 255
    image = np.dstack([np.full((48, 64, 3), 128, np.uint8), alpha])
    for i in range(4):
        Image.fromarray(image, "RGBA").save(os.path.join(os.path.dirname(rig), "images", f"cam_{i:02d}.png"))
    job = tmp_path / "job"
    code, events, err = run_engine(["train", "--data", rig, "--out", str(job), "--region", "0", "0", "0.9", "0.2"]
                                   + TINY)
    assert_one_error(code, events, err, "holds none of the object the masks show")
    assert not [e for e in events if e["event"] == protocol.PROGRESS]
    code, events, err = run_engine(["train", "--data", rig, "--out", str(tmp_path / "ok"), "--region", "0", "0",
                                    "0", "0.5"] + TINY)
    assert code == 0, err


def test_sigterm_during_extraction_cancels_it(tmp_path, tiny_rig):
    """A large extraction stops at the next chunk with a checkpoint and `cancelled` (it once ran to the
    end, ignoring the signal); the seconds it took are printed, not asserted."""
    import time
    proc = engine(["train", "--data", tiny_rig, "--out", str(tmp_path / "job"), "--iterations", "4",
                   "--resolution", "1024", "--set", "train.checkpoint_every=0"])
    events = read_until(proc, protocol.STAGE)
    while not (events[-1]["event"] == protocol.STAGE and events[-1]["name"] == "extract"):
        events += read_until(proc, protocol.STAGE)
    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    print(f"extraction stopped {time.monotonic() - asked:.2f} s after SIGTERM")
    final = [protocol.decode(line) for line in out.splitlines() if line.strip()]
    assert proc.returncode == protocol.EXIT_CANCELLED, err
    assert final[-1]["event"] == protocol.CANCELLED and final[-1]["checkpoint"]
    assert not [e for e in final if e["event"] == protocol.MESH]
