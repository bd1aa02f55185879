"""When the host looks at the device during training.

A training step on a GPU takes milliseconds, and the host runs ahead of it, queueing kernels. Any
read of a device value (`.item()`, a progress bar showing a tensor, a collective whose result the
host inspects) makes the host wait until the GPU has caught up, and the queue drains. So per-step
work stays on the device (counters, flags), and the host reads it back only at check batches: every
`trainer.log_every_n_steps` batches and at the last batch of the epoch (so that nothing pending is
left behind when validation and checkpoints run).

The cadence counts batches, not optimizer steps: every DDP rank has the same number of batches,
so all ranks reach the same check batch together and can agree there with one collective, even if
a rank skipped an optimizer step (a batch whose every image was undecodable).
"""

import pytorch_lightning as pl


def is_check_batch(trainer: pl.Trainer, batch_idx: int) -> bool:
    """True after the batches at which device-side values are read back to the host."""
    every = max(1, trainer.log_every_n_steps)
    last_batch = batch_idx + 1 >= trainer.num_training_batches
    return (batch_idx + 1) % every == 0 or last_batch
