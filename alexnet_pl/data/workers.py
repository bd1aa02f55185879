"""What every DataLoader worker runs first: it stops listening to the job scheduler's signals, then
seeds itself as Lightning would.

SLURM sends SIGTERM (time limit, preemption) and `--signal=SIGUSR1@120` (without `B:`) to every
process of the job step, the loader workers included. Both kill a worker; the main process then
raises "DataLoader worker killed" before its own handler can write a checkpoint. Only the main
process should act on them: it writes the checkpoint and ends its workers itself.

The main process ends its workers with SIGTERM too (multiprocessing does so at exit, e.g. after a
SIGTERM stopped training with the workers still running), and a worker that ignored SIGTERM
outright would keep that exit waiting forever. So a worker tells the senders apart, as torch's own
worker handler does: a SIGTERM from its parent ends it, any other is dropped. Python's signal
handlers do not see the sender, so a thread waits for the signals with sigwaitinfo, which does.
"""

import os
import signal
import threading

from lightning_fabric.utilities.seed import pl_worker_init_function

SCHEDULER_SIGNALS = {
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
}


def init_worker(worker_id: int, rank: int = 0) -> None:
    """The DataLoader's worker_init_fn. Lightning adds its own seeding only to loaders without one
    (when seed_everything(workers=True) set PL_SEED_WORKERS), so this calls it itself."""
    leave_scheduler_signals_to_the_main_process()
    if os.environ.get("PL_SEED_WORKERS") == "1":
        pl_worker_init_function(worker_id, rank=rank)


def leave_scheduler_signals_to_the_main_process() -> None:
    if not hasattr(signal, "sigwaitinfo"):
        # macOS and Windows have no sigwaitinfo (nor SLURM): ignore only SIGUSR1 there, which
        # the main process never sends its workers.
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        return
    # Blocked in this thread, and in every thread started after it (they inherit the mask), the
    # signals wait for the thread below instead of running the process's handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, SCHEDULER_SIGNALS)
    parent = os.getppid()
    threading.Thread(
        target=drop_signals_not_from, args=(parent,), name="scheduler-signals", daemon=True
    ).start()


def drop_signals_not_from(parent: int) -> None:
    while True:
        received = signal.sigwaitinfo(SCHEDULER_SIGNALS)
        if received.si_signo == signal.SIGTERM and received.si_pid == parent:
            os._exit(0)  # as torch's worker handler does: its parent is shutting it down
