"""Joining a multi-process run (``--multihost``; docs/design/scale_out.md)."""

from __future__ import annotations

import socket
import time

import jax


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int = 300) -> None:
    """``jax.distributed.initialize``: explicit when ``coordinator`` is given (all three
    settings then), else auto-detected (TPU slices, SLURM). ``timeout_s`` bounds the wait
    for the other processes at the start and, as the heartbeat timeout, for a process
    that stopped answering: the others then exit with an error instead of hanging. On CPU
    the cross-process collectives are gloo's.

    Raises:
      ValueError: incomplete or inconsistent explicit settings (before connecting), or a
        coordinator that does not answer within ``timeout_s``.
    """
    explicit = (coordinator, num_processes, process_id)
    if any(v is not None for v in explicit) and None in explicit:
        raise ValueError("--coordinator, --num_processes and --process_id go together (or give none of them to "
                         "detect a TPU slice or a SLURM job)")
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"need --num_processes >= 1 and 0 <= --process_id < --num_processes, got "
                             f"{num_processes} and {process_id}")
    if timeout_s < 1:
        raise ValueError(f"--distributed_timeout must be >= 1 second, got {timeout_s}")
    if coordinator is not None and process_id != 0:  # jax would abort the process with "another task died"
        wait_for_coordinator(coordinator, timeout_s)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the CPU backend's only; GPUs/TPUs keep theirs
    jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=timeout_s)


def wait_for_coordinator(coordinator: str, timeout_s: float) -> None:
    """Waits until process 0's coordination service at ``HOST:PORT`` accepts a connection.

    Raises:
      ValueError: it did not within ``timeout_s`` seconds.
    """
    host, _, port = coordinator.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=max(0.1, min(2.0, deadline - time.monotonic()))).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ValueError(f"cannot reach the coordinator {coordinator} within {timeout_s} s ({e.strerror or e}): "
                                 "start process 0 (--process_id 0) on that host, check --coordinator and that the "
                                 "port is open, or raise --distributed_timeout") from None
            time.sleep(0.2)
