"""Whether a resumed command would go on computing the same run: its resolved config against the
one the run was trained with (stored in every checkpoint), key by key.

Derived from the config itself, not from a list of what matters: every key must match except the
few below, which change where and how fast a run reports or which machine runs it, never what it
computes. A key added to conf/ later is covered without anyone remembering to list it.
"""

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alexnet_pl.errors import UserError

# Dotted keys (and everything under them) that may differ between a run and its resume.
MAY_DIFFER = (
    "ckpt_path",  # where this resume starts from
    "init_from",  # where the run's first weights came from (its first command's; a resume's null)
    "paths",  # the run folder: the run's own, by construction (resume.py)
    "logger",  # where the metrics go, not what they are
    "callbacks",  # checkpoints, views, monitors, the SIGTERM stop: they watch the run
    "data.num_workers",  # decoding processes: the same images, the same order (data/sampling.py)
    "data.pin_memory",
    "data.persistent_workers",
    "data.bad_file_report",
    # Which machine: the global batch (data.batch_size, compared) is split over the processes, so
    # each optimizer step sees the same images on 1 or 8 devices (data/sampling.py).
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.benchmark",  # cuDNN's choice of kernel for the same convolution
    "trainer.log_every_n_steps",  # logging cadence (and the check batches: safeguards.py)
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.profiler",  # where the time goes, not what is computed
    "trainer.default_root_dir",
    "trainer.max_epochs",  # may grow: what is derived from it is compared on its own keys
    "channels_last",  # the same arithmetic in another memory layout
    "compile",  # the same network, fused
)
MISSING = "<not set>"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer.lr": 1e-4, ...}: one entry per leaf; lists are leaves (compared whole)."""
    leaves: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            leaves.update(flatten(value, f"{name}."))
        else:
            leaves[name] = value
    return leaves


def may_differ(key: str) -> bool:
    return any(key == allowed or key.startswith(f"{allowed}.") for allowed in MAY_DIFFER)


def differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (run's value, this command's value)} for every key whose values differ, sorted."""
    old_leaves, new_leaves = flatten(saved), flatten(new)
    found = {}
    for key in sorted(set(old_leaves) | set(new_leaves)):
        old, value = old_leaves.get(key, MISSING), new_leaves.get(key, MISSING)
        # A key added to conf/ after the run was trained, at null (off): the run's behaviour.
        if old != value and {old, value} != {MISSING, None}:
            found[key] = (old, value)
    return found


def derived_from_max_epochs(config: DictConfig) -> set[str]:
    """The keys whose value is computed from trainer.max_epochs (`${trainer.max_epochs}`, maybe in
    an expression), read from the unresolved config: e.g. a cosine schedule's T_max."""
    unresolved = flatten(OmegaConf.to_container(config, resolve=False))
    return {
        key
        for key, value in unresolved.items()
        if isinstance(value, str) and "trainer.max_epochs" in value
    }


def check_same_computation(
    ckpt_path: str, saved: Mapping[str, Any], config: DictConfig, new: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Raises UserError naming every key whose difference changes what the run computes, with both
    values and what to do; returns the differences that do not (recorded with the resume)."""
    if "loss" not in saved:
        # Written before the module was built from one config node (no `loss` group, schedulers
        # by `_target_`, no ablation switches): the same computation under other keys, so a key
        # by key comparison would list differences that are not real.
        raise UserError(
            f"ckpt_path={ckpt_path} was written by an earlier alexnet-pl, whose config has no "
            "`loss` node (before the ablation switches and the module built from config), so "
            "this version cannot check that a resume keeps its recipe. Finish the run with the "
            "version that started it, or start a new run from its weights: "
            f"init_from={ckpt_path} instead of ckpt_path"
        )
    found = differences(saved, new)
    refused = {key: values for key, values in found.items() if not may_differ(key)}
    if refused:
        derived = derived_from_max_epochs(config)
        lines = []
        for key, (old, value) in refused.items():
            because = " (derived from trainer.max_epochs)" if key in derived else ""
            lines.append(f"  {key}: the run has {old!r}, this command {value!r}{because}")
        keep = " ".join(
            f"~{key}" if old == MISSING else f"{key}={format_override(old)}"
            for key, (old, _) in refused.items()
        )
        raise UserError(
            f"ckpt_path={ckpt_path} continues a run trained with other settings; resuming would "
            "change what the run computes while its record says otherwise:\n"
            + "\n".join(lines)
            + f"\nTo continue the run, rerun with its values ({keep}). To train with the new "
            f"values, start a new run from its weights: init_from={ckpt_path} instead of "
            "ckpt_path (a fresh optimizer and schedule, in a new folder)."
        )
    return found


def format_override(value: Any) -> str:
    """A value as it would be written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
