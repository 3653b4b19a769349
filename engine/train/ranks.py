"""A dynamic job spread over processes by torchrun (`torchrun --nproc-per-node N -m engine train ...`).

torchrun starts one engine per process with RANK, WORLD_SIZE and LOCAL_RANK set (several machines join
through its rendezvous and must share the job folder). Frame 0 is trained once, by rank 0; the later
frames are split into contiguous chunks, one per rank (`chunks`). Rank 0's chunk follows frame 0 as a
single process would; every other rank waits for frame 0's weights (JOB/ranks/first_frame.pt), predicts
its way from frame 0 through the frames before its chunk ("guide" frames: the motion only, no training,
no mesh) and trains its chunk's first frame longer (CHUNK_START_FACTOR) before going on frame by frame.

The job folder: rank 0 owns config.json, events.jsonl, checkpoints/ and meshes/sequence.json, as a
single process does; rank R > 0 keeps its own in JOB/ranks/R/ (checkpoints/, events.jsonl, its lock)
and lists its finished frames in JOB/ranks/R/frames.json, from which rank 0 rewrites sequence.json as
they come (`merged_entries`). Every rank writes its frames' meshes into meshes/ itself. JOB/ranks/plan.json
records the processes and frames: a resume needs the same number of processes, and every rank goes on
from its own checkpoint, so finished frames are not trained again.

No collective operation is needed after start-up: ranks wait on files (cancellable), so a rank that
dies leaves the others to be stopped by torchrun; they checkpoint, rank 0 lists the frames missing
from the sequence, and `--resume` (under torchrun again) trains them.
"""
import glob
import json
import os
import time

import numpy as np

from ..config import InputError
from ..io import protocol

CHUNK_START_FACTOR = 2          # a chunk's first frame (after rank 0's) trains this many frames' steps
FIRST_FRAME_FILE = "first_frame.pt"
PLAN_FILE = "plan.json"
FRAMES_FILE = "frames.json"
WAIT_POLL_S = 0.5


class Ranks:
    """This process's place among torchrun's: rank, world size, local rank (its GPU on the machine)."""

    def __init__(self, rank=0, world=1, local_rank=0, local_world=1):
        self.rank, self.world, self.local_rank, self.local_world = rank, world, local_rank, local_world
        self.shared_threads = None  # CPU threads rank 0 drops to once frame 0 is done (None: no change)

    @classmethod
    def from_env(cls, environ=None):
        """From torchrun's variables; a single process (world 1) without them. InputError when they do
        not make sense."""
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" not in env:
            return cls()
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local_rank = int(env.get("LOCAL_RANK", rank))
            local_world = int(env.get("LOCAL_WORLD_SIZE", world))
        except (KeyError, ValueError):
            raise InputError("torchrun's RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers "
                             f"(got RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r})") from None
        if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(1, local_world):
            raise InputError(f"torchrun's RANK={rank} and LOCAL_RANK={local_rank} do not fit WORLD_SIZE={world} "
                             f"and LOCAL_WORLD_SIZE={local_world}")
        return cls(rank, world, local_rank, max(1, local_world))

    @property
    def spread(self):
        return self.world > 1

    @property
    def leader(self):
        return self.rank == 0


def use_threads(threads, backend):
    """Run torch (and the numba kernels) on `threads` CPU threads."""
    import torch
    torch.set_num_threads(threads)
    if backend == "numba":
        from ..nn.hashgrid_numba import use_threads as numba_threads
        numba_threads(threads)


def chunks(frames, world):
    """The later frames (all but the first) in `world` contiguous chunks, as even as can be; ranks whose
    chunk would be empty get none."""
    later = list(frames[1:])
    return [list(map(int, c)) for c in np.array_split(np.asarray(later, dtype=np.int64), world)] if later else \
        [[] for _ in range(world)]


def rank_frames(frames, world, rank):
    """(the frames rank `rank` goes through, the guide frames among them): frame 0, then for ranks
    after 0 the frames before its chunk (predicted, not trained), then its chunk."""
    parts = chunks(frames, world)
    mine = parts[rank]
    if rank == 0 or not mine:
        return [frames[0]] + mine, set()
    guides = [f for f in frames[1:] if f < mine[0]]
    return [frames[0]] + guides + mine, set(guides)


def ranks_dir(job_dir):
    return os.path.join(job_dir, protocol.RANKS_DIR)


def rank_dir(job_dir, rank):
    """Where rank `rank` keeps its own files: the job folder itself for rank 0."""
    return job_dir if rank == 0 else os.path.join(ranks_dir(job_dir), str(rank))


def first_frame_path(job_dir):
    return os.path.join(ranks_dir(job_dir), FIRST_FRAME_FILE)


def write_plan(job_dir, world, frames, resume):
    """Rank 0: JOB/ranks/plan.json for a fresh run; on resume, InputError unless the job ran on as many
    processes over the same frames."""
    path = os.path.join(ranks_dir(job_dir), PLAN_FILE)
    plan = {"world_size": world, "frames": list(map(int, frames)), "chunks": chunks(frames, world)}
    if resume and not os.path.exists(path) and glob.glob(os.path.join(job_dir, protocol.CHECKPOINTS_DIR, "*.pt")):
        raise InputError(f"--resume: {job_dir} was trained by one process; resume it without torchrun")
    if resume and os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            saved_world, saved_frames = int(saved["world_size"]), list(saved["frames"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: damaged plan of a job spread over processes ({exc})") from None
        if saved_world != world:
            raise InputError(f"--resume: the job ran on {saved_world} processes; resume it under torchrun "
                             f"with --nproc-per-node {saved_world} (in all), not {world}")
        if saved_frames != plan["frames"]:
            raise InputError(f"--resume: the job trained frames {saved_frames[0]} to {saved_frames[-1]}; "
                             f"leave --frames out to go on")
        return path
    os.makedirs(ranks_dir(job_dir), exist_ok=True)
    protocol.write_atomic(path, json.dumps(plan) + "\n")
    return path


def check_single_resume(job_dir, resume):
    """One process resuming: InputError when the job's frames were spread over several."""
    world = read_plan_world(job_dir) if resume else 1
    if world > 1:
        raise InputError(f"--resume: the job ran on {world} processes; resume it under torchrun with "
                         f"--nproc-per-node {world} (in all)")


def read_plan_world(job_dir):
    """The number of processes a job ran on (1 when it was not spread)."""
    try:
        with open(os.path.join(ranks_dir(job_dir), PLAN_FILE), encoding="utf-8") as f:
            return int(json.load(f)["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1


def write_rank_frames(job_dir, rank, entries, finished):
    """Rank R > 0: its finished frames' sequence.json entries, and whether its chunk is done."""
    path = os.path.join(rank_dir(job_dir, rank), FRAMES_FILE)
    protocol.write_atomic(path, json.dumps({"rank": rank, "finished": bool(finished), "frames": entries}) + "\n")


def read_rank_frames(job_dir, rank):
    """(entries, finished) of rank R > 0 so far; ([], False) before its first frame."""
    try:
        with open(os.path.join(rank_dir(job_dir, rank), FRAMES_FILE), encoding="utf-8") as f:
            data = json.load(f)
        return list(data["frames"]), bool(data["finished"])
    except (OSError, ValueError, KeyError, TypeError):
        return [], False


def merged_entries(job_dir, world, own):
    """Rank 0's entries `own` with every other rank's finished frames, one entry a frame."""
    by_frame = {e["frame"]: e for rank in range(1, world) for e in read_rank_frames(job_dir, rank)[0]}
    by_frame.update({e["frame"]: e for e in own})
    return [by_frame[f] for f in sorted(by_frame)]


def all_finished(job_dir, world):
    return all(read_rank_frames(job_dir, rank)[1] for rank in range(1, world))


def wait_until(ready, check, poll=WAIT_POLL_S):
    """Poll `ready()` until it is true, calling `check()` (which raises on a cancel) between polls."""
    while not ready():
        check()
        time.sleep(poll)
