"""Start a small ``torch.distributed`` process group from a notebook cell (notebook 04, section 9).

``launch(worker, world_size=2, args=())`` runs ``worker(rank, world_size, *args)`` in ``world_size`` fresh
processes (the *spawn* start method, as ``torch.multiprocessing.spawn`` and ``torchrun`` use), each with
a gloo process group on 127.0.0.1 already initialised, and returns the workers' results in rank order.

Why the worker must live in an importable module (``course_utils.recipes.parallel``): spawned processes
import it by name; a function defined in a notebook cell cannot be found by them. That is also why the
student never meets the ``if __name__ == "__main__"`` guard: the notebook's own code is never re-run.

A rank that raises stops the others and re-raises its error here; a rank that hangs is stopped after
``timeout`` seconds (the process group has the same timeout) and reported as a ``RuntimeError``.
"""
from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import pickle
import queue
import socket
import traceback


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the rendezvous port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(worker, rank: int, world_size: int, port: int, timeout: float, args, results) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per rank on a laptop
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout))
        try:
            out = worker(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        # plain pickle bytes: torch's multiprocessing reductions would share tensors through file
        # descriptors that die with this process
        results.put((rank, "ok", pickle.dumps(out)))
    except BaseException as exc:  # noqa: BLE001 -- report any failure to the parent, then exit
        results.put((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def launch(worker, world_size: int = 2, args: tuple = (), timeout: float = 60.0) -> list:
    """``[worker(0, P, *args), ..., worker(P-1, P, *args)]``, each run in its own process with a gloo group.

    ``worker`` must be a module-level function of an importable module; its result must pickle (plain
    Python values, numpy arrays or CPU tensors)."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if getattr(worker, "__module__", "__main__") == "__main__" or "<locals>" in getattr(worker, "__qualname__", ""):
        raise ValueError(f"{getattr(worker, '__qualname__', worker)!r} is defined in the notebook or script itself; "
                         "spawned ranks cannot import it: put it in a module (see course_utils.recipes.parallel)")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive (seconds), got {timeout}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(worker, r, world_size, port, timeout, args, results), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    # Ranks start in a few seconds (each imports torch); the group's own timeout covers a rank that blocks
    # in a collective; the margin covers start-up.
    deadline = timeout + 60.0
    out: dict[int, object] = {}
    try:
        while len(out) < world_size:
            try:
                rank, status, value = results.get(timeout=deadline)
            except queue.Empty:
                missing = sorted(set(range(world_size)) - set(out))
                raise RuntimeError(
                    f"ranks {missing} did not finish within {deadline:.0f} s (a rank is hung or waits for a "
                    f"collective the others never call). / Los procesos {missing} no terminaron en "
                    f"{deadline:.0f} s: alguno quedó colgado esperando una comunicación.") from None
            if status == "error":
                raise RuntimeError(f"rank {rank} failed / el proceso {rank} falló:\n{value}")
            out[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        results.close()
    return [out[r] for r in range(world_size)]
