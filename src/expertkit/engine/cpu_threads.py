"""Which threads of the local engine get the CPU cores, so that OpenMP never holds more threads than there are cores.

PyTorch's CPU ops run on OpenMP (libgomp on Linux), and every thread that runs a parallel op gets a team of worker
threads of its own, kept for the thread's life. Once the process holds more OpenMP threads than cores, libgomp stops
letting idle workers spin between parallel regions and puts them to sleep instead, and a decode step runs about 130
regions: each wakes a sleeping worker. Measured on bench/serve_throughput.py's model (2 cores): a decode loop took
11.4 ms per token in a process where it was the only thread to have run torch ops, 18-21 ms once a second thread had.
So on CPU the engine gives the cores to one thread:

- a model's continuous-batching loop (transformers' thread) decodes on every core (`torch.get_num_threads()` when
  the engine starts: OMP_NUM_THREADS, else every core), and a request alone on the model (the direct path,
  engine/answer.py's SoloJob) is decoded in that same thread, between the loop's steps (`LoopLane`). With several
  served models, the first to decode gets the cores and the others decode on one core each;
- requests for the own loop (seed, penalty, logprobs, JSON) decode with one core each (`single_threaded`, the
  decode pool's initializer);
- models are loaded and merged in a thread that ends with the load (`in_passing_thread`), so its team goes with it.

In-process, ms per decode step on that model, before -> after: 1 request 19-21 -> 10.6-11, 4 concurrent 22-27 ->
15.1-15.5 (bench/README.md, "Issue 17, evening"). On a GPU the cores only feed it: none of this is used there.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def single_threaded() -> None:
    """Run this thread's torch ops on one core (a decode worker's initializer)."""
    import torch

    torch.set_num_threads(1)


def in_passing_thread(fn: Callable[[], T], threads: int) -> T:
    """`fn()` on `threads` cores in a thread of its own that ends with it (its OpenMP team goes with it); the
    calling thread's own cores are left as they were."""

    def run() -> T:
        import torch

        torch.set_num_threads(threads)
        return fn()

    with ThreadPoolExecutor(1, thread_name_prefix="expertkit-load") as loader:
        return loader.submit(run).result()


class LoopLane(Executor):
    """Runs what is submitted in a continuous-batching manager's own thread, between two of its steps. The manager
    waits for it: meant for work that runs while the manager has nothing to do (a request alone on the model), which
    stops when the manager gets work of its own.

    The thread starts on one core (a thread gets its OpenMP team at its first parallel op, so a model nobody asks
    for never gets one). The first time it decodes (lane work or a batching step) it claims the cores: the first such
    thread in the process (or the first after the holder's manager stopped) gets `cores`, any other stays on one, so
    that OpenMP never holds more threads than cores when several models are served.

    Hooks transformers' `_generation_loop_body` (one pass of the manager's loop) and `_create_batch_processor` (the
    loop's start) on this one manager object."""

    def __init__(self, manager, cores: int):
        self.manager, self.cores = manager, cores
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.placed = False  # whether this thread has claimed its cores (or been refused them)
        self.body, self.create = manager._generation_loop_body, manager._create_batch_processor
        manager._generation_loop_body = self.pass_or_work
        manager._create_batch_processor = self.create_on_one_core

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        self.work.put((future, fn, args, kwargs))
        self.manager._wake_up_loop.set()  # the loop may be waiting for requests (up to 0.1 s)
        return future

    def create_on_one_core(self):
        import torch

        torch.set_num_threads(1)
        return self.create()

    def pass_or_work(self, batch_processor, bootstrapping: bool) -> bool:
        try:
            future, fn, args, kwargs = self.work.get_nowait()
        except queue.Empty:
            if not self.placed and getattr(self.manager, "current_batch", 0):  # it has decoded a step
                self.place()
            return self.body(batch_processor, bootstrapping)
        if not self.placed:
            self.place()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - the submitter reads it from the future
                future.set_exception(e)
        return True

    def place(self) -> None:
        import torch

        self.placed = True
        if claim_cores():
            torch.set_num_threads(self.cores)


_holder: list[threading.Thread] = []  # the thread that decodes on every core, once one has claimed them
_claiming = threading.Lock()


def claim_cores() -> bool:
    """Whether the calling thread may decode on every core: it holds them, or nobody (alive) does and now it does."""
    me = threading.current_thread()
    with _claiming:
        if _holder and _holder[0].is_alive() and _holder[0] is not me:
            return False
        _holder[:] = [me]
        return True
