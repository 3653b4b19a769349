"""A static job trained by two processes (engine/train/parallel.py): averaged gradients are the
gradients of the ranks' rays together, the models stay identical, and torchrun runs the command line."""
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, make_rig, ring_cameras

from engine.io import protocol
from engine.train.parallel import average_gradients, rank_seed
from engine.train import ranks as spread


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(rank, port, inputs, targets, results):
    """Rank `rank` of 2: a linear model from one seed, its half of the batch, 3 averaged Adam steps."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        half = slice(rank * 4, rank * 4 + 4)
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            ((model(inputs[half]) - targets[half]) ** 2).mean().backward()
            average_gradients(model.parameters(), 2)
            optimizer.step()
        results[rank] = [p.detach().clone() for p in model.parameters()]
    finally:
        dist.destroy_process_group()


def test_averaged_gradients_train_as_one_process_with_both_batches():
    """Two ranks with 4 rows each, their gradients averaged, end exactly where one process with the 8
    rows ends (a mean loss over equal halves), and identical to each other."""
    generator = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(8, 3, generator=generator), torch.randn(8, 2, generator=generator)
    results = mp.Manager().dict()
    mp.spawn(two_ranks, args=(free_port(), inputs, targets, results), nprocs=2, join=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        ((model(inputs) - targets) ** 2).mean().backward()
        optimizer.step()
    for a, b, single in zip(results[0], results[1], model.parameters()):
        assert torch.equal(a, b)
        assert torch.allclose(a, single.detach(), atol=1e-6)


def test_each_rank_draws_its_own_rays():
    assert rank_seed(7, 0) == 7  # a fresh rank 0 draws what one process draws
    seeds = {rank_seed(7, rank, step) for rank in range(3) for step in (0, 500)}
    assert len(seeds) == 6 and rank_seed(7, 1, 500) == rank_seed(7, 1, 500)


@pytest.mark.slow
def test_torchrun_trains_a_static_rig_on_two_processes(tmp_path):
    rig = make_rig(tmp_path, ring_cameras(count=8, width=32, height=24, focal=40.0), name="tiny")
    job = str(tmp_path / "job")
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "-m", "engine", "train", "--data", rig, "--out", job, "--iterations", "20",
                             "--resolution", "24"], cwd=REPO, env=env, text=True, capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [e for e in map(protocol.decode, result.stdout.splitlines()) if e is not None]
    assert events[0]["event"] == protocol.STARTED and events[-1]["event"] == protocol.DONE
    assert os.path.isfile(events[-1]["outputs"]["mesh"])
    printed = {e["event"] for e in events if "rank" in e}
    assert printed <= {protocol.WARNING}, printed  # rank 1 prints only what the add-on must see
    other = protocol.read_events(os.path.join(spread.rank_dir(job, 1), protocol.EVENTS_FILE))
    assert other[-1]["event"] == protocol.DONE and other[-1]["rank"] == 1
    steps = [e["iteration"] for e in other if e["event"] == protocol.PROGRESS]
    assert steps[-1] == 20  # every step with rank 0 (they average each other's gradients)
    assert not os.path.exists(os.path.join(spread.rank_dir(job, 1), protocol.CHECKPOINTS_DIR))
