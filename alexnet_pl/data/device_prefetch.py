"""Decoding ahead: a thread turns the loader's batches into device batches while the step runs.

With data.decode=gpu the main process decodes (CUDA cannot run in the forked workers). Done in
the training thread between steps, the GPU would wait for nvjpeg and nvjpeg for the step. Here a
background thread takes each collated batch from the DataLoader, prepares it (decode and crop) on
its own CUDA stream, records an event, and keeps up to `depth` batches ready. The training thread
makes its stream wait for that event (on the GPU: the host does not block) and hands the tensors
to its stream (record_stream), so that the caching allocator does not give their memory back to
the side stream while the step still reads them. On a CPU the same thread runs without streams.
"""

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import torch
from torch.utils.data import DataLoader

from alexnet_pl import private_api

POLL_SECONDS = 0.1  # how often a blocked thread checks whether it should stop
JOIN_SECONDS = 60.0  # a worker may take this long to hand over the batch the thread waits for


class _End:
    """Put by the thread after the loader's last batch."""


class _Failed:
    """Put by the thread when preparing or loading raised: re-raised in the training thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def tensors_in(batch: Any) -> Iterator[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, list | tuple):
        for item in batch:
            yield from tensors_in(item)


class _Work:
    """What the thread shares with the training thread: the queue and the stop flag. The iterator
    that the training thread holds is not shared, so dropping it stops the thread (__del__)."""

    def __init__(self, prepare: Callable[[Any], Any], device: torch.device, depth: int) -> None:
        self.prepare, self.device = prepare, device
        self.ready: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()

    def run(self, batches: Iterator) -> None:
        try:
            stream = None
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # per thread: DDP rank r decodes on its GPU
                stream = torch.cuda.Stream(self.device)
            with torch.no_grad():
                for batch in batches:
                    if self.stopping.is_set():
                        return
                    event = None
                    with torch.cuda.stream(stream) if stream is not None else nullcontext():
                        prepared = self.prepare(batch)
                        if stream is not None:
                            event = torch.cuda.Event()
                            event.record(stream)
                    if not self.put((prepared, event)):
                        return
            self.put(_End())
        except BaseException as error:  # every failure goes to the training thread
            self.put(_Failed(error))

    def put(self, item: Any) -> bool:
        """Waits for room in the queue; False if told to stop meanwhile."""
        while not self.stopping.is_set():
            try:
                self.ready.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def take(self, thread: threading.Thread) -> Any:
        while True:
            try:
                return self.ready.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not thread.is_alive() and self.ready.empty():
                    raise RuntimeError(
                        "the decoding thread ended without a batch or an error"
                    ) from None

    def stop(self) -> None:
        self.stopping.set()
        while True:  # free the prepared batches (device memory) now
            try:
                self.ready.get_nowait()
            except queue.Empty:
                return


class DecodingAhead:
    """One pass over the wrapped loader. The thread starts at the first next(), not at iter():
    Lightning calls iter() once just to check that it can, and sets the sampler's epoch after
    iter() and before the first batch."""

    def __init__(
        self, loader: DataLoader, prepare: Callable, device: torch.device, depth: int
    ) -> None:
        self.loader, self.device = loader, device
        self.work = _Work(prepare, device, depth)
        self.thread: threading.Thread | None = None
        self.finished = False

    def __iter__(self) -> "DecodingAhead":
        return self

    def __next__(self) -> Any:
        if self.finished:
            raise StopIteration
        if self.thread is None:
            # The DataLoader's iterator is made here, in the main thread: its workers are forked
            # from it and it installs the handler that notices a dead worker.
            batches = iter(self.loader)
            self.thread = threading.Thread(
                target=self.work.run, args=(batches,), name="decoding-ahead", daemon=True
            )
            self.thread.start()
        item = self.work.take(self.thread)
        if isinstance(item, _End | _Failed):
            self.finished = True
            self.thread.join(JOIN_SECONDS)
            if isinstance(item, _Failed):
                raise item.error
            raise StopIteration
        batch, event = item
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for tensor in tensors_in(batch):
                tensor.record_stream(stream)
        return batch

    def close(self) -> None:
        """Stops the thread: at once if it waits for room in the queue, else after the batch it
        is loading or preparing."""
        self.finished = True
        self.work.stop()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(JOIN_SECONDS)
            if self.thread.is_alive():
                raise RuntimeError(
                    f"the decoding thread did not stop within {JOIN_SECONDS:.0f} s; is a loader "
                    "worker stuck reading a file?"
                )

    def __del__(self) -> None:
        self.work.stopping.set()  # no join: this may run anywhere the garbage collector does


class DecodingAheadLoader:
    """What train_dataloader/val_dataloader return with data.decode=gpu: iterates like the
    DataLoader it wraps, but each batch comes out prepared on `device` (`prepare` runs in the
    thread), up to `depth` batches ahead. Lightning reads len(), sampler and batch_sampler (for
    set_epoch), dataset, and sets worker_init_fn: all reach the DataLoader inside."""

    def __init__(
        self,
        loader: DataLoader,
        prepare: Callable[[Any], Any],
        device: torch.device,
        depth: int = 2,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth={depth}: decode at least one batch ahead")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.loader, self.prepare, self.device, self.depth = loader, prepare, device, depth
        self.running: DecodingAhead | None = None
        private_api.check_lightning_resets_loaders()  # which stops the thread (_iterator below)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    @property
    def sampler(self) -> Any:
        return self.loader.sampler

    @property
    def batch_sampler(self) -> Any:
        return self.loader.batch_sampler

    @property
    def worker_init_fn(self) -> Callable | None:
        return self.loader.worker_init_fn

    @worker_init_fn.setter
    def worker_init_fn(self, function: Callable | None) -> None:
        self.loader.worker_init_fn = function  # Lightning's seeding of the workers

    def __iter__(self) -> DecodingAhead:
        self.close()  # a pass left unfinished (Lightning's sanity check, limit_*_batches)
        self.running = DecodingAhead(self.loader, self.prepare, self.device, self.depth)
        return self.running

    def close(self) -> None:
        if self.running is not None:
            self.running.close()
            self.running = None

    # Lightning ends a DataLoader (CombinedLoader.reset: at the end of fit and validate, and after
    # an exception) by shutting its workers down and setting its _iterator to None; here that
    # stops the thread, then does the same to the DataLoader inside.
    @property
    def _iterator(self) -> DecodingAhead | None:
        return self.running

    @_iterator.setter
    def _iterator(self, value: None) -> None:
        if value is not None:
            raise ValueError("only None (stop) can be assigned to the running pass")
        self.close()
        private_api.shut_down_loader(self.loader)
