"""One seed per run, the same on every rank; random draws that differ from rank to rank.

Two things need the seed to agree across DDP ranks: the order of the training images (each rank
takes its stride of one permutation, seeded from PL_GLOBAL_SEED) and the seed the run records.
Under torchrun or SLURM every rank starts on its own and, with `seed=null`, draws a seed of its own,
so the ranks agree only after the process group exists: SeedEveryRank takes rank 0's seed then.

The draws of training itself (crop and flip, PCA lighting, both dropout masks) must differ: with
one seed on every rank, image i of every rank's batch would get the same crop, lighting and
dropout mask, and a 4 x 32 batch would hold 32 distinct draws instead of 128. So once the ranks
agree, each seeds its generators from (seed, rank). The network's initial weights are drawn before
(in train.py, from the seed alone) and DDP copies rank 0's weights to every rank when it wraps the
model, so they are the same everywhere whatever each rank drew.
"""

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


def choose_seed(seed: int | None) -> int:
    """Seeds every generator with `seed`, or with one drawn from the OS when it is None.

    PL_GLOBAL_SEED is never read: a value exported in the shell, or left in the environment by
    the previous job of a Hydra multirun, would silently fix the "drawn" seed of every run. DDP
    ranks agree later, in SeedEveryRank.
    """
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    return pl.seed_everything(seed, workers=True)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed for one rank's generators, independent of every other (seed, rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def seed_generators(seed: int) -> None:
    """Seeds Python's, numpy's and torch's generators (CPU and every GPU) of this process only:
    unlike seed_everything it leaves PL_GLOBAL_SEED, the seed of the data order, alone."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class SeedEveryRank(pl.Callback):
    """Gives every rank rank 0's seed (PL_GLOBAL_SEED, hence the data order; the seed recorded in
    config.yaml and the checkpoints is rank 0's), then seeds each rank's generators from (seed,
    rank), and after a resume from (seed, rank, step), so that a resumed run does not replay the
    draws of the run's first steps and is itself reproducible.

    setup() runs after Lightning has started the process group and before any DataLoader exists.
    """

    def __init__(self, seed: int, run_config: dict[str, Any] | None = None) -> None:
        self.seed = seed
        self.run_config = run_config  # its "seed" becomes the agreed one, on every rank

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.seed = trainer.strategy.broadcast(self.seed, src=0)
        if self.run_config is not None:
            self.run_config["seed"] = self.seed
        if trainer.world_size > 1:
            pl.seed_everything(self.seed, workers=True)  # sets PL_GLOBAL_SEED on this rank
        seed_generators(rank_seed(self.seed, trainer.global_rank))

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Called when ckpt_path is restored, after setup() and before the training loader starts.
        step = int(checkpoint.get("global_step", 0))
        seed_generators(rank_seed(self.seed, trainer.global_rank, step))
