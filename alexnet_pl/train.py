"""Train AlexNet: `python -m alexnet_pl.train [experiment=paper|demo] [key=value ...]`.

Config (conf/) -> objects (hydra.utils.instantiate) -> Trainer.fit. Under DDP, Lightning runs this
same command again for every other local rank, pointed at the same Hydra run folder.
"""

import logging
import sys

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from alexnet_pl import preflight, resume, speed
from alexnet_pl.errors import reported_as_user_errors
from alexnet_pl.exact_resume import PlateauStepInCheckpoint
from alexnet_pl.module import AlexNetModule
from alexnet_pl.monitoring import HParamsWithMetrics
from alexnet_pl.run_record import ConfigToLoggers, end_wandb_run
from alexnet_pl.safeguards import sigterm_exit_status
from alexnet_pl.seeding import SeedEveryRank, choose_seed

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> pl.Trainer:
    # ckpt_path (or a SLURM requeue): the run this command continues, in its own folder (resume.py)
    resumed = resume.find(cfg)  # a null seed becomes the run's
    cfg.seed = choose_seed(cfg.seed)
    preflight.check_learning_rate(cfg.optimizer)
    speed.choose_for_this_machine(cfg)  # each `auto` speed switch made concrete, and logged
    datamodule = instantiate(cfg.data)
    if cfg.model.num_classes is None:
        # The default: one output per class folder in data.root/train (listed; no image is read).
        cfg.model.num_classes = len(datamodule.read_class_names())
    cfg.init_from = preflight.resolve_resume_path(cfg.init_from)  # the file, in the record
    run_config = OmegaConf.to_container(cfg, resolve=True)  # num_classes and seed as used
    # The `module` node only gathers model, loss, optimizer and scheduler: recorded once, there.
    run_config.pop("module", None)
    changes = resume.check_same_run(cfg, run_config, resumed)  # a changed recipe stops here

    # Network, loss, optimizer and schedule from the `module` node (conf/train.yaml). The config
    # it stores in checkpoints is set afterwards: passed to instantiate, its `_target_`s would be
    # built too.
    module: AlexNetModule = instantiate(cfg.module)
    module.run_config = run_config
    resume.load_initial_weights(module.network, cfg.init_from)  # init_from: weights, a new run
    # An entry that builds None adds no callback: callbacks.<name>=null, or the progress bar with
    # trainer.enable_progress_bar=false.
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    callbacks = [callback for callback in callbacks if callback is not None]
    callbacks += [ConfigToLoggers(run_config), HParamsWithMetrics(run_config)]
    callbacks.append(resume.LoggerRunIds())  # a resume logs into the same W&B and MLflow runs
    callbacks.append(PlateauStepInCheckpoint())  # resumes keep ReduceLROnPlateau's every step
    # Under DDP: rank 0's seed on every rank, and each rank's own draws (seeding.py).
    callbacks.append(SeedEveryRank(cfg.seed, run_config))
    resume.continue_loggers(cfg.logger, resumed)  # the run's own events, CSV, W&B and MLflow runs
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    preflight.check_global_batch(cfg.data.batch_size, trainer.world_size)  # before DDP launches
    preflight.check_no_multirun_ddp(trainer.world_size)

    if trainer.is_global_zero:
        # The resolved config, with the seed actually used (Hydra's .hydra/config.yaml has null),
        # and a record of each resume.
        resume.write_run_record(run_config, resumed, changes)
        log.info("run folder: %s (seed %d)", cfg.paths.output_dir, cfg.seed)

    try:
        # Lightning's own load (ckpt_path, or a SLURM requeue's hpc_ckpt) builds nothing but plain
        # data: safeguards.AtomicCheckpointIO loads with weights_only=True.
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except SIGTERMException as interrupted:
        # Lightning's SIGTERMException exits with status 0; a job scheduler must see that the run
        # was interrupted (last.ckpt was written by safeguards.StopTogether): 143.
        raise SystemExit(sigterm_exit_status(trainer)) from interrupted
    end_wandb_run(loggers)  # before the next job of a Hydra sweep starts in this process
    return trainer


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with reported_as_user_errors():  # the message alone, no traceback
        train(cfg)


if __name__ == "__main__":
    with reported_as_user_errors():  # a ckpt_path that is no run's: the message alone
        resume.continue_in_run_folder(sys.argv)  # before Hydra makes a run folder of its own
    main()
