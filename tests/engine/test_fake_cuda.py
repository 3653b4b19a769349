"""The engine's CUDA paths on a stand-in CUDA device (tests/fake_cuda.py): tensors that report cuda:0,
compute on the CPU, and fail the way a GPU would when they meet a CPU tensor, a CPU generator or numpy.

Every preset trains a few steps, static and dynamic, through the engine's own command line with
`--device cuda --backend torch`, and extracts its mesh; the alternative paths (float16 autocast with the
GradScaler, the hierarchical sampler with the background model, the analytic gradient) and checkpoints
moving between the devices run too. The training steps are tiny: what is checked is where tensors
live and which types meet, not what is learned.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, look_at, make_rig
from fake_cuda import CudaTensor, DeviceMismatch, fake_cuda

from engine.io import protocol

DRIVER = os.path.join(REPO, "tests", "fake_cuda.py")
# Small enough for a few CPU steps whatever the preset: the table size changes no code path.
SMALL = ["--set", "encoding.log2_table=14", "--set", "train.rays_per_batch=96", "--set", "train.max_rays=256",
         "--set", "render.occupancy_resolution=32", "--set", "render.occupancy_update_every=2",
         "--set", "train.checkpoint_every=0"]


def run_on_fake_cuda(args, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, DRIVER] + args, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, events, proc.stderr


def assert_ran(code, events, err):
    assert code == 0, f"exit {code}\n{err[-4000:]}"
    kinds = [e["event"] for e in events]
    assert protocol.ERROR not in kinds, err[-4000:]
    assert kinds[0] == protocol.STARTED and kinds[-1] == protocol.DONE


def ball_dataset(folder, frames=(0,), count=8, size=24):
    """A transforms.json of a white ball's silhouettes (every camera and frame alike)."""
    cameras = []
    K = np.array([[size * 1.6, 0, size / 2], [0, size * 1.6, size / 2], [0, 0, 1]])
    for frame in frames:
        for i in range(count):
            angle = 2 * np.pi * i / count
            eye = 3.0 * np.array([np.cos(angle), np.sin(angle), 0.4 * np.sin(3 * angle)])
            cameras.append({"K": K, "c2w": look_at(eye, (0, 0, 0)), "width": size, "height": size,
                            "image": f"f{frame}_c{i:02d}", "camera": f"c{i}" if len(frames) > 1 else "",
                            "frame": frame})
    path = make_rig(folder, cameras)
    # Ball silhouettes in the alpha channel (make_rig writes blank pictures).
    from PIL import Image
    with open(path) as f:
        rig = json.load(f)
    px = np.stack(np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5), -1)
    inside = ((px - size / 2) ** 2).sum(-1) < (size * 0.25) ** 2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[inside] = (200, 150, 100, 255)
    for entry in rig["frames"]:
        Image.fromarray(rgba, "RGBA").save(os.path.join(folder, entry["file_path"]))
    return path


@pytest.fixture(scope="module")
def ball(tmp_path_factory):
    return ball_dataset(str(tmp_path_factory.mktemp("ball")))


# -- the stand-in itself ------------------------------------------------------------------------------

def test_the_stand_in_fails_where_a_gpu_fails():
    with fake_cuda():
        x = torch.ones(4, 3, device="cuda")
        assert isinstance(x, CudaTensor) and x.device.type == "cuda" and torch.cuda.is_available()
        with pytest.raises(DeviceMismatch):
            x + torch.ones(4, 3)
        assert (x + torch.tensor(2.0)).device.type == "cuda"  # CPU scalars are fine
        assert x[torch.tensor([0, 2])].shape == (2, 3)           # so are CPU index tensors
        with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator"):
            torch.rand(3, device="cuda", generator=torch.Generator().manual_seed(0))
        assert torch.rand(3, device="cuda", generator=torch.Generator(device="cuda")).device.type == "cuda"
        with pytest.raises(TypeError, match="numpy"):
            np.asarray(x)
        assert x.cpu().numpy().sum() == 12 and type(x.cpu()) is torch.Tensor
        layer = torch.nn.Linear(3, 2).to("cuda")
        assert layer.weight.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16
        layer(x).sum().backward()
        assert layer.weight.grad.device.type == "cuda"
        leaf = torch.tensor([1.0, 2.0], device="cuda", requires_grad=True)  # a leaf, as on a GPU
        assert leaf.is_leaf and leaf.requires_grad
    assert not torch.cuda.is_available() or torch.version.cuda  # patched only inside


# -- the engine on it -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,extra", [
    ("cpu", []),
    ("fast", ["--set", "train.mixed_precision=fp16"]),   # float16 autocast with the GradScaler
    ("quality", []),                                      # 8 features, 256 units, curvature, bfloat16
    ("cpu-hierarchical-background", ["--set", "render.sampler=hierarchical", "--no-masks"]),
    ("cpu-analytic", ["--set", "train.gradient=analytic"]),
])
def test_every_preset_trains_and_extracts_on_cuda(ball, tmp_path, name, extra):
    job = str(tmp_path / "job")
    code, events, err = run_on_fake_cuda(["train", "--data", ball, "--out", job, "--preset", name.split("-")[0],
                                          "--device", "cuda", "--backend", "torch", "--iterations", "4",
                                          "--resolution", "24", "--preview-every", "2"] + SMALL + extra)
    assert_ran(code, events, err)
    started = events[0]
    assert started["device"] == "cuda" and started["backend"] == "torch"
    assert any(e["event"] == protocol.PREVIEW for e in events)
    mesh = [e for e in events if e["event"] == protocol.MESH]
    assert len(mesh) == 1 and mesh[0]["faces"] > 0 and os.path.isfile(mesh[0]["path"])


def test_checkpoints_move_between_the_gpu_and_the_cpu(ball, tmp_path):
    """A job trained on the GPU resumes on the CPU and the other way round; extract and evaluate read a
    GPU job's checkpoint."""
    job = str(tmp_path / "job")
    base = ["--data", ball, "--out", job, "--preset", "cpu", "--backend", "torch", "--resolution", "24",
            "--holdout-every", "4"] + SMALL
    assert_ran(*run_on_fake_cuda(["train", "--device", "cuda", "--iterations", "3"] + base))
    env = dict(os.environ, PYTHONPATH=REPO)
    cpu = subprocess.run([sys.executable, "-m", "engine", "train", "--device", "cpu", "--iterations", "5",
                          "--resume"] + base, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                         stdin=subprocess.DEVNULL)
    events = [json.loads(line) for line in cpu.stdout.splitlines() if line.startswith("{")]
    assert_ran(cpu.returncode, events, cpu.stderr)
    assert "resumed from" in cpu.stderr and "step 3" in cpu.stderr
    code, events, err = run_on_fake_cuda(["train", "--device", "cuda", "--iterations", "7", "--resume"] + base)
    assert_ran(code, events, err)
    assert "step 5" in err
    for command in (["extract", job, "--resolution", "24"], ["evaluate", job]):
        code, events, err = run_on_fake_cuda(command)
        assert code == 0 and protocol.ERROR not in [e["event"] for e in events], err[-4000:]


def test_a_dynamic_sequence_trains_on_cuda(tmp_path):
    data = ball_dataset(str(tmp_path / "moving"), frames=(0, 1, 2))
    job = str(tmp_path / "job")
    code, events, err = run_on_fake_cuda(["train", "--data", data, "--out", job, "--preset", "cpu",
                                          "--device", "cuda", "--backend", "torch", "--iterations", "4",
                                          "--resolution", "24", "--set", "dynamic.frame_iterations=2",
                                          "--set", "dynamic.prediction_iterations=2"] + SMALL)
    assert_ran(code, events, err)
    meshes = [e for e in events if e["event"] == protocol.MESH]
    assert [e["frame"] for e in meshes] == [0, 1, 2]
    with open(os.path.join(job, protocol.MESHES_DIR, "sequence.json")) as f:
        assert [entry["frame"] for entry in json.load(f)["frames"]] == [0, 1, 2]


def test_the_speed_benchmark_times_the_encoding_on_cuda(tmp_path):
    """bench speed's in-process part (CUDA events, synchronisation, free memory, the copy bandwidth)
    runs on CUDA, so a GPU machine's first run spends its time measuring, not failing."""
    out = str(tmp_path / "speed.json")
    code, _, err = run_on_fake_cuda(["--speed-bench", "--parts", "encoding", "--device", "cuda", "--backends",
                                     "torch", "--points", "10", "--budget-s", "0.05", "--copy-mib", "8",
                                     "--json", out])
    assert code == 0, err[-4000:]
    with open(out) as f:
        result = json.load(f)
    assert result["machine"]["device"] == "cuda" and not result["failed"]
    measured = {(row["part"], row["backend"]) for row in result["encoding"]}
    assert measured == {("encoding", "torch"), ("taps", "torch")}, result["encoding"]
    assert all(row["seconds"] > 0 and row["reps"] >= 3 for row in result["encoding"])
