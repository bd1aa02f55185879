"""Train AlexNet: `python -m alexnet_pl.train [experiment=paper|demo] [key=value ...]`.

Config (conf/) -> objects (hydra.utils.instantiate) -> Trainer.fit. Under DDP, Lightning runs this
same command again for every other local rank, pointed at the same Hydra run folder.
"""

import logging
import os
import random
import signal
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from alexnet_pl import preflight
from alexnet_pl.module import AlexNetModule
from alexnet_pl.monitoring import HParamsWithMetrics
from alexnet_pl.run_record import RunInfoInCheckpoint

log = logging.getLogger(__name__)


def choose_seed(seed: int | None) -> int:
    """Seeds every generator; without a configured seed, draws one that the run then records.

    DDP ranks > 0 find rank 0's choice in PL_GLOBAL_SEED (set by seed_everything, inherited by the
    processes it launches), so all ranks agree on the seed.
    """
    if seed is None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", random.SystemRandom().randrange(2**31)))
    return pl.seed_everything(seed, workers=True)


def train(cfg: DictConfig) -> pl.Trainer:
    cfg.seed = choose_seed(cfg.seed)
    preflight.check_learning_rate(cfg.optimizer)
    cfg.ckpt_path = preflight.resolve_resume_path(cfg.ckpt_path)
    if cfg.ckpt_path is not None:
        preflight.check_checkpoint_fits_model(cfg.ckpt_path, cfg.model)
    run_config = OmegaConf.to_container(cfg, resolve=True)

    datamodule = instantiate(cfg.data)
    module = AlexNetModule(
        network=instantiate(cfg.model),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
        scheduler_monitor=cfg.scheduler_monitor,
        channels_last=cfg.channels_last,
        compile=OmegaConf.to_container(cfg.compile) if cfg.compile is not None else None,
    )
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    callbacks += [RunInfoInCheckpoint(run_config), HParamsWithMetrics(run_config)]
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    preflight.check_global_batch(cfg.data.batch_size, trainer.world_size)  # before DDP launches
    preflight.check_no_multirun_ddp(trainer.world_size)

    if trainer.is_global_zero:
        # The resolved config, with the seed actually used (Hydra's .hydra/config.yaml has null).
        OmegaConf.save(cfg, Path(cfg.paths.output_dir) / "config.yaml", resolve=True)
        log.info("run folder: %s (seed %d)", cfg.paths.output_dir, cfg.seed)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except SIGTERMException as interrupted:
        # Lightning's SIGTERMException exits with status 0; a job scheduler must see that the run
        # was interrupted (last.ckpt was written by safeguards.CheckpointOnSigterm).
        raise SystemExit(128 + signal.SIGTERM) from interrupted
    return trainer


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
