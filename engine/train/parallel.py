"""A static job trained by several processes under torchrun: data parallelism over rays.

Every rank holds the same model (built from train.seed, then rank 0's weights broadcast), draws its own
rays (its generator seeded by train.seed and the rank), and after each backward the gradients are
averaged over the ranks (one all-reduce of them all, flattened), so every optimiser step is the same on
every rank and the models stay identical: N ranks train as one process with N times the rays a step.
Rank 0 is the job (events, checkpoints, previews, the mesh); the others write their events into
JOB/ranks/R/ and no checkpoint; a resume loads rank 0's checkpoint on every rank and reseeds the
others' rays. The group is gloo on the CPU, NCCL for CUDA tensors (engine.cli.start_ranks).
"""
import numpy as np
import torch
import torch.distributed as dist

from .trainer import Trainer


def rank_seed(seed, rank, step=0):
    """A rank's own ray seed (rank 0 keeps train.seed's stream only when step is 0: a fresh run draws
    what a single process would)."""
    if rank == 0 and step == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2 ** 63, rank, step]).generate_state(1, np.uint64)[0] % 2 ** 63)


def average_gradients(parameters, world):
    """All-reduce the parameters' gradients (missing ones as zeros, so every rank sends the same
    layout) and divide by the number of ranks; every rank ends with the same gradients."""
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for p in parameters:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


class DataParallelTrainer(Trainer):
    """The static Trainer, one of torchrun's ranks (see the module's docstring)."""

    def __init__(self, session, emitter, cancel=None):
        super().__init__(session, emitter, cancel)
        self.ranks = session.ranks
        self.generator.manual_seed(rank_seed(self.cfg.train.seed, self.ranks.rank))

    def load(self):
        super().load()
        with torch.no_grad():  # the same start on every rank, whatever a rank's random state was
            for tensor in list(self.model.parameters()) + list(self.model.buffers()):
                dist.broadcast(tensor, src=0)
        self.out.log(f"process {self.ranks.rank} of {self.ranks.world}: rays of its own, gradients averaged "
                     f"over the {self.ranks.world} processes")

    def before_step(self):
        average_gradients(self.model.parameters(), self.ranks.world)

    def load_checkpoint(self, path, state=None):
        state = super().load_checkpoint(path, state)
        if not self.ranks.leader:  # rank 0's checkpoint: its rays must not be this rank's
            self.generator.manual_seed(rank_seed(self.cfg.train.seed, self.ranks.rank, self.step))
        return state

    def save_checkpoint(self):
        if self.ranks.leader:
            return super().save_checkpoint()
        return None

    def write_preview(self):
        if self.ranks.leader:
            super().write_preview()

    def run(self, resume=False):
        if self.ranks.leader:
            return super().run(resume=resume)
        self.load()
        if resume:
            self.resume_checkpoint()
        self.train_until(self.cfg.train.iterations)
        return {}
