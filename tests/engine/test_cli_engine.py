"""`python -m engine` as the add-on runs it: events on stdout, bad input, cancel and resume."""
import json
import math
import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO, make_rig, ring_cameras, write_png
from engine_process import assert_one_error, engine, read_until, run_engine

from engine.io import protocol


@pytest.fixture
def tiny_rig(tmp_path):
    return make_rig(tmp_path, ring_cameras(count=4, width=24, height=20, focal=30.0), name="tiny")


def test_missing_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "transforms.json")
    assert_one_error(*run_engine(["train", "--data", missing, "--out", str(tmp_path / "job")]), missing,
                     "no such file")
    assert not os.path.exists(tmp_path / "job")  # nothing half-made


def test_malformed_json(tmp_path):
    path = tmp_path / "transforms.json"
    path.write_text('{"frames": [ {"file_path": ')
    assert_one_error(*run_engine(["train", "--data", str(path), "--out", str(tmp_path / "job")]), str(path),
                     "malformed JSON")


def test_unreadable_json(tmp_path):
    path = tmp_path / "transforms.json"
    path.write_bytes(b"\xff\xfe\x00binary")
    assert_one_error(*run_engine(["train", "--data", str(path), "--out", str(tmp_path / "job")]), str(path))


def test_images_missing(tmp_path, tiny_rig):
    for name in os.listdir(os.path.join(os.path.dirname(tiny_rig), "images")):
        os.remove(os.path.join(os.path.dirname(tiny_rig), "images", name))
    assert_one_error(*run_engine(["train", "--data", tiny_rig, "--out", str(tmp_path / "job")]), tiny_rig,
                     "no usable views")


def test_some_images_missing_is_a_warning(tmp_path, tiny_rig):
    os.remove(os.path.join(os.path.dirname(tiny_rig), "images", "cam_00.png"))
    code, events, err = run_engine(["train", "--data", tiny_rig, "--out", str(tmp_path / "job"),
                                    "--iterations", "2", "--resolution", "16"])
    warnings = [e["message"] for e in events if e["event"] == protocol.WARNING]
    assert any("1 of 4 frames" in w for w in warnings), (warnings, err)


def test_corrupt_image(tmp_path, tiny_rig):
    image = os.path.join(os.path.dirname(tiny_rig), "images", "cam_02.png")
    with open(image, "r+b") as f:
        f.seek(40)
        f.write(b"\x00" * 40)  # header intact, pixel data broken
    assert_one_error(*run_engine(["train", "--data", tiny_rig, "--out", str(tmp_path / "job")]), image)


def test_no_usable_views_when_masks_are_empty(tmp_path):
    cams = ring_cameras(count=3, width=16, height=16, focal=20.0)
    path = make_rig(tmp_path, cams, name="empty")
    for name in os.listdir(os.path.join(tmp_path, "empty", "images")):
        write_png(os.path.join(tmp_path, "empty", "images", name), 16, 16, rgba=True)
    # write_png's alpha is 128/255 > 0.5: make it zero by rewriting with the fully transparent PNG below.
    from PIL import Image
    for name in os.listdir(os.path.join(tmp_path, "empty", "images")):
        Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(os.path.join(tmp_path, "empty", "images", name))
    assert_one_error(*run_engine(["train", "--data", path, "--out", str(tmp_path / "job")]), "masks leave nothing")


def test_bad_option_values(tmp_path, tiny_rig):
    assert_one_error(*run_engine(["train", "--data", tiny_rig, "--out", str(tmp_path / "j"), "--iterations", "0"]),
                     "--iterations")
    assert_one_error(*run_engine(["train", "--data", tiny_rig, "--out", str(tmp_path / "j"), "--resolution", "4"]),
                     "--resolution")


@pytest.mark.parametrize("how", ["stdin", "sigterm", "sigint", "stdin closed"])
def test_cancel_saves_a_checkpoint_and_resume_goes_on(tmp_path, tiny_rig, how):
    job = str(tmp_path / "job")
    proc = engine(["train", "--data", tiny_rig, "--out", job, "--iterations", "100000", "--resolution", "16"])
    started = read_until(proc, protocol.PROGRESS)
    assert started[0]["event"] == protocol.STARTED and started[0]["backend"] == "numba"  # auto on the CPU
    if how == "stdin":
        proc.stdin.write("cancel\n")
        proc.stdin.flush()
    elif how == "stdin closed":  # Blender crashed or was killed: the pipe's far end is gone
        proc.stdin.close()
    else:
        proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
    rest = read_until(proc, protocol.CANCELLED)
    proc.wait(timeout=60)
    assert proc.returncode == protocol.EXIT_CANCELLED
    cancelled = rest[-1]
    assert os.path.isfile(cancelled["checkpoint"]) and cancelled["iteration"] >= 1
    events = protocol.read_events(os.path.join(job, protocol.EVENTS_FILE))
    assert events[-1]["event"] == protocol.CANCELLED  # the job directory has the same story
    if how != "stdin":
        return
    # Resume: the step count goes on from the checkpoint, the optimiser state comes back.
    import torch
    saved = torch.load(cancelled["checkpoint"], weights_only=False)
    target = cancelled["iteration"] + 3
    code, events, err = run_engine(["train", "--data", tiny_rig, "--out", job, "--resume",
                                    "--iterations", str(target), "--resolution", "16"])
    assert code == 0, err
    progress = [e for e in events if e["event"] == protocol.PROGRESS]
    assert progress[0]["iteration"] == cancelled["iteration"] + 1 and progress[-1]["iteration"] == target
    assert events[-1]["event"] == protocol.DONE
    final = torch.load(latest_checkpoint_of(job), weights_only=False)
    assert final["step"] == target
    adam = final["optimizer"]["state"][0]["step"]
    assert float(adam) == float(saved["optimizer"]["state"][0]["step"]) + 3


def latest_checkpoint_of(job):
    from engine.train.checkpoints import latest_checkpoint
    return latest_checkpoint(job)


def test_events_and_job_directory_of_a_finished_run(tmp_path, tiny_rig):
    job = str(tmp_path / "job")
    code, events, err = run_engine(["train", "--data", tiny_rig, "--out", job, "--iterations", "3",
                                    "--resolution", "24"])
    assert code == 0, err
    kinds = [e["event"] for e in events]
    assert kinds[0] == protocol.STARTED and kinds[-1] == protocol.DONE
    assert [e["name"] for e in events if e["event"] == protocol.STAGE] == ["load", "train", "extract"]
    assert all(isinstance(e["t"], float) for e in events)
    started = events[0]
    assert started["config"]["train"]["iterations"] == 3 and started["device"] == "cpu"
    for name in (protocol.CONFIG_FILE, protocol.EVENTS_FILE, protocol.NORMALIZATION_FILE):
        assert os.path.isfile(os.path.join(job, name))
    with open(os.path.join(job, protocol.CONFIG_FILE)) as f:
        assert json.load(f)["mesh"]["resolution"] == 24
    assert events[-1]["outputs"]["mesh"] == os.path.join(job, protocol.MESHES_DIR, protocol.STATIC_MESH_FILE)
    assert len(protocol.read_events(os.path.join(job, protocol.EVENTS_FILE))) == len(events)


def test_extract_reextracts_from_the_checkpoint(tmp_path, tiny_rig):
    job = str(tmp_path / "job")
    code, events, err = run_engine(["train", "--data", tiny_rig, "--out", job, "--iterations", "2",
                                    "--resolution", "16"])
    assert code == 0, err
    mesh = events[-1]["outputs"]["mesh"]
    first = os.path.getsize(mesh)
    code, events, err = run_engine(["extract", job, "--resolution", "40"])
    assert code == 0, err
    assert events[-1]["event"] == protocol.DONE and events[-1]["outputs"]["mesh"] == mesh
    assert os.path.getsize(mesh) > first  # a finer lattice gives more vertices
    finer = os.path.getsize(mesh)
    code, events, err = run_engine(["extract", job, "--resolution", "40", "--largest-component"])
    assert code == 0, err
    assert os.path.getsize(mesh) <= finer   # pieces other than the largest are dropped
    code, events, err = run_engine(["extract", str(tmp_path)])
    assert_one_error(code, events, err, "not a job directory")


def test_region_from_the_command_line_is_used_and_reported(tmp_path, tiny_rig):
    job = str(tmp_path / "job")
    code, events, err = run_engine(["train", "--data", tiny_rig, "--out", job, "--iterations", "1",
                                    "--resolution", "16", "--region", "0.1", "-0.2", "0.3", "0.75"])
    assert code == 0, err
    train = next(e for e in events if e["event"] == protocol.STAGE and e["name"] == "train")
    assert train["region"] == {"center": [0.1, -0.2, 0.3], "radius": 0.75}
    with open(os.path.join(job, protocol.NORMALIZATION_FILE)) as f:
        saved = json.load(f)
    assert saved["center"] == [0.1, -0.2, 0.3] and saved["radius"] == 0.75
    # Every vertex lies inside the region's bounding cube (meshes come back in world coordinates).
    from engine.io.ply import read_triangles
    vertices, _, _ = read_triangles(events[-1]["outputs"]["mesh"])
    assert (abs(vertices - [0.1, -0.2, 0.3]) <= 0.75 + 1e-4).all()
    assert_one_error(*run_engine(["train", "--data", tiny_rig, "--out", str(tmp_path / "j2"),
                                  "--region", "0", "0", "0", "-1"]), "--region")


def test_holdout_downscale_and_evaluate(tmp_path):
    cams = ring_cameras(count=8, width=32, height=24, focal=40.0)
    rig = make_rig(tmp_path, cams, name="ring")
    job = str(tmp_path / "job")
    code, events, err = run_engine(["train", "--data", rig, "--out", job, "--iterations", "2", "--resolution",
                                    "16", "--downscale", "2", "--holdout-every", "4"])
    assert code == 0, err
    started = events[0]
    assert started["config"]["data"] == {"downscale": 2, "holdout_every": 4, "use_masks": True}
    assert "6 views, 1152 pixels" in err  # 8 views minus 2 held out, at 16x12
    code, events, err = run_engine(["evaluate", job])
    assert code == 0, err
    outputs = events[-1]["outputs"]
    with open(outputs["eval"]) as f:
        report = json.load(f)
    assert [os.path.basename(v["image"]) for v in report["views"]] == ["cam_00.png", "cam_04.png"]
    assert report["downscale"] == 2 and report["mask_iou"] is None
    assert all(math.isfinite(v["psnr"]) for v in report["views"]) and os.path.isfile(report["views"][0]["render"])


def test_resume_gives_the_result_of_an_uninterrupted_run(tmp_path, tiny_rig):
    """Cancel-free split run: 3 steps, then --resume to 6, against 6 steps in one go. The RNG state
    and optimiser moments are in the checkpoint, so the weights agree up to float summation order."""
    import torch
    common = ["--data", tiny_rig, "--resolution", "16", "--seed", "3"]
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    assert run_engine(["train", "--out", whole, "--iterations", "6"] + common)[0] == 0
    assert run_engine(["train", "--out", split, "--iterations", "3"] + common)[0] == 0
    code, events, err = run_engine(["train", "--out", split, "--iterations", "6", "--resume"] + common)
    assert code == 0, err
    a = torch.load(latest_checkpoint_of(whole), weights_only=False)
    b = torch.load(latest_checkpoint_of(split), weights_only=False)
    assert a["step"] == b["step"] == 6
    for name, value in a["model"].items():
        assert torch.allclose(value, b["model"][name], atol=1e-4, rtol=1e-3), name


def test_set_overrides_choose_the_alternative_methods(tmp_path, tiny_rig):
    """--set picks NeuS's hierarchical sampler, analytic gradients, the Huber loss and float16 mixed
    precision (loss scaling included, on the CPU here); the run finishes and reports what it used."""
    job = str(tmp_path / "job")
    overrides = ["render.sampler=hierarchical", "render.samples_per_ray=16", "render.fine_samples=16",
                 "train.gradient=analytic", "train.color_loss=huber", "train.mixed_precision=fp16"]
    code, events, err = run_engine(["train", "--data", tiny_rig, "--out", job, "--iterations", "3",
                                    "--resolution", "16"] + [a for o in overrides for a in ("--set", o)])
    assert code == 0, err
    config = events[0]["config"]
    assert (config["render"]["sampler"], config["train"]["gradient"], config["train"]["color_loss"],
            config["train"]["mixed_precision"]) == ("hierarchical", "analytic", "huber", "fp16")
    assert "mixed precision: colour and background MLPs in float16" in err
    progress = [e for e in events if e["event"] == protocol.PROGRESS]
    assert progress and all(math.isfinite(e["loss"]) for e in progress)
    assert_one_error(*run_engine(["train", "--data", tiny_rig, "--out", str(tmp_path / "j2"),
                                  "--set", "render.sampler=stratified"]), "render.sampler", "occupancy")


def test_a_finished_run_leaves_its_curves(tmp_path, tiny_rig):
    import numpy as np
    from PIL import Image

    from engine.curves import PSNR_COLOR, SIZE
    job = str(tmp_path / "job")
    code, events, err = run_engine(["train", "--data", tiny_rig, "--out", job, "--iterations", "3",
                                    "--resolution", "16"])
    assert code == 0, err
    assert events[-1]["event"] == protocol.DONE
    with Image.open(os.path.join(job, protocol.CURVES_FILE)) as im:
        assert im.size == SIZE
        pixels = np.asarray(im.convert("RGB"))
    assert (pixels == PSNR_COLOR).all(-1).any()  # the run's progress is on it
    assert not os.path.exists(os.path.join(job, protocol.CURVES_FILE + ".tmp.png"))


def test_train_without_torch_says_how_to_get_it(tmp_path, tiny_rig):
    """The add-on pointed at a Python without torch: one error event naming the fix, not a traceback."""
    hidden = tmp_path / "hidden" / "torch"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hidden.parent), REPO]), PYTHONUNBUFFERED="1")
    job = str(tmp_path / "job")
    proc = subprocess.run([sys.executable, "-m", "engine", "train", "--data", tiny_rig, "--out", job],
                          cwd=REPO, env=env, text=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert proc.returncode == protocol.EXIT_FAILED, proc.stderr
    events = [protocol.decode(line) for line in proc.stdout.splitlines()]
    assert [e["event"] for e in events] == [protocol.ERROR], proc.stdout
    message = events[0]["message"]
    assert "has no torch" in message and sys.executable in message
    assert "Preferences > Add-ons > Marble" in message and "python3 build.py setup" in message
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(job)


def write_half_masked_images(rig):
    """Make the rig's images RGBA: the left half transparent (alpha 0), the right half opaque; RGB a
    flat (200, 100, 50) everywhere. Returns that colour in [0, 1]."""
    import numpy as np
    from PIL import Image

    folder = os.path.join(os.path.dirname(rig), "images")
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        with Image.open(path) as im:
            width, height = im.size
        pixels = np.zeros((height, width, 4), dtype=np.uint8)
        pixels[..., :3] = (200, 100, 50)
        pixels[:, width // 2:, 3] = 255
        Image.fromarray(pixels, "RGBA").save(path)
    return [200 / 255, 100 / 255, 50 / 255]


def test_use_masks_off_reads_the_images_as_unmasked(tiny_rig):
    import numpy as np

    from engine.config import Config, preset
    from engine.data import Normalization, RayDataset
    from engine.io.rig import load_rig
    rgb = write_half_masked_images(tiny_rig)
    unit = Normalization(np.zeros(3), 1.0)
    masked = RayDataset(load_rig(tiny_rig), background=0.0, normalization=unit)
    assert masked.has_masks and 0 < float(masked.mask.mean()) < 1
    assert np.allclose(masked.rgb[masked.mask == 0].numpy(), 0.0)  # composited onto the background
    plain = RayDataset(load_rig(tiny_rig), background=0.0, normalization=unit, use_masks=False)
    assert not plain.has_masks and plain.mask is None and plain.masks_np is None
    assert np.allclose(plain.rgb.numpy(), rgb, atol=1e-6)  # RGB as stored, alpha dropped
    cfg = preset("cpu")
    assert cfg.data.use_masks is True
    cfg.set("data.use_masks=false")
    assert cfg.data.use_masks is False
    old = preset("cpu").to_dict()
    del old["data"]["use_masks"]  # a job's config.json from before the switch
    assert Config.from_dict(old).data.use_masks is True


def test_no_masks_trains_without_them(tmp_path, tiny_rig):
    write_half_masked_images(tiny_rig)
    code, events, err = run_engine(["train", "--data", tiny_rig, "--out", str(tmp_path / "job"), "--iterations",
                                    "2", "--resolution", "16", "--no-masks"])
    assert code == 0, err
    assert events[0]["event"] == protocol.STARTED and events[0]["config"]["data"]["use_masks"] is False
    assert "masks: no (data.use_masks is off)" in err
