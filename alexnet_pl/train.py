"""Train AlexNet: `python -m alexnet_pl.train [experiment=paper|demo] [key=value ...]`.

Config (conf/) -> objects (hydra.utils.instantiate) -> Trainer.fit. Under DDP, Lightning runs this
same command again for every other local rank, pointed at the same Hydra run folder.
"""

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from alexnet_pl import preflight, speed
from alexnet_pl.exact_resume import PlateauStepInCheckpoint
from alexnet_pl.module import AlexNetModule
from alexnet_pl.monitoring import HParamsWithMetrics
from alexnet_pl.run_record import ConfigToLoggers, end_wandb_run
from alexnet_pl.safeguards import sigterm_exit_status
from alexnet_pl.seeding import SeedEveryRank, choose_seed

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> pl.Trainer:
    cfg.seed = choose_seed(cfg.seed)
    preflight.check_learning_rate(cfg.optimizer)
    speed.choose_for_this_machine(cfg)  # each `auto` speed switch made concrete, and logged
    datamodule = instantiate(cfg.data)
    if cfg.model.num_classes is None:
        # The default: one output per class folder in data.root/train (listed; no image is read).
        cfg.model.num_classes = len(datamodule.read_class_names())
    cfg.ckpt_path = preflight.resolve_resume_path(cfg.ckpt_path)
    if cfg.ckpt_path is not None:
        preflight.check_checkpoint_fits_model(cfg.ckpt_path, cfg.model)
    run_config = OmegaConf.to_container(cfg, resolve=True)  # num_classes and seed as used

    module = AlexNetModule(
        network=instantiate(cfg.model),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
        scheduler_monitor=cfg.scheduler_monitor,
        channels_last=cfg.channels_last,
        compile=OmegaConf.to_container(cfg.compile) if cfg.compile is not None else None,
        run_config=run_config,
    )
    # An entry that builds None adds no callback: callbacks.<name>=null, or the progress bar with
    # trainer.enable_progress_bar=false.
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    callbacks = [callback for callback in callbacks if callback is not None]
    callbacks += [ConfigToLoggers(run_config), HParamsWithMetrics(run_config)]
    callbacks.append(PlateauStepInCheckpoint())  # resumes keep ReduceLROnPlateau's every step
    # Under DDP: rank 0's seed on every rank, and each rank's own draws (seeding.py).
    callbacks.append(SeedEveryRank(cfg.seed, run_config))
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    preflight.check_global_batch(cfg.data.batch_size, trainer.world_size)  # before DDP launches
    preflight.check_no_multirun_ddp(trainer.world_size)

    if trainer.is_global_zero:
        # The resolved config, with the seed actually used (Hydra's .hydra/config.yaml has null).
        OmegaConf.save(cfg, Path(cfg.paths.output_dir) / "config.yaml", resolve=True)
        log.info("run folder: %s (seed %d)", cfg.paths.output_dir, cfg.seed)

    try:
        # weights_only: Lightning's own load (ckpt_path, or a SLURM requeue's hpc_ckpt) builds
        # nothing but plain data, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says.
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    except SIGTERMException as interrupted:
        # Lightning's SIGTERMException exits with status 0; a job scheduler must see that the run
        # was interrupted (last.ckpt was written by safeguards.StopTogether): 143.
        raise SystemExit(sigterm_exit_status(trainer)) from interrupted
    end_wandb_run(loggers)  # before the next job of a Hydra sweep starts in this process
    return trainer


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
