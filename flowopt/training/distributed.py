"""Multi-process runs: joining the processes of a run with ``jax.distributed``, and agreeing on its run directory.

Every process of a run runs the same command; :func:`initialize` joins them
before any other JAX call, either as named (coordinator address, process
count, this process's id) or, under SLURM's ``srun`` or Open MPI's ``mpirun``,
by JAX's own cluster detection. ``jax.devices()`` then lists the devices of every
process and ``flowopt.training.parallel`` splits each global batch over
them: each process reads only its rows of the batch.

In the run directory, process 0 holds the lock and writes ``config.json`` and
``metrics.jsonl``; every process takes part in each checkpoint (orbax writes
them collectively), so the directory must be one shared by all processes (one
host, or a shared file system). :func:`agree` makes a failure of one process
(a directory in use, say) the failure of all, instead of leaving the others
waiting in a collective.

On CPU, the processes reduce over gloo (``jax_cpu_collectives_implementation``,
set by :func:`initialize` unless another implementation is configured).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from flowopt.training.rundir import notice

COORDINATOR_FORM = "HOST:PORT"
# The launchers whose processes join without flags: JAX's detection method, the variables the launcher sets in every
# process (the last one: the process count). A launcher of one process is left alone, as is any other environment
# (Cloud TPU, Kubernetes: pass the flags, or call jax.distributed.initialize), so a plain run never probes a network.
LAUNCHERS = {
    "slurm": ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"),
    "ompi": ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
}
_MESSAGE_BYTES = 1024  # longest failure message :func:`agree` passes between processes


class ClusterError(RuntimeError):
    """The processes of a multi-process run could not join (no coordinator answered, the port is taken)."""


def parse_coordinator(address: str) -> tuple[str, int]:
    """``(host, port)`` of a coordinator address ``HOST:PORT`` (an IPv6 host in brackets: ``[::1]:1234``).

    Raises:
      ValueError: the address is not of that form, or the port is not in [1, 65535].
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or host.startswith(":") or not port.isdigit() or not host.strip() == host:
        raise ValueError(f"the coordinator address must be {COORDINATOR_FORM}, e.g. 10.0.0.1:1234, got {address!r}.")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(f"an IPv6 coordinator host goes in brackets, e.g. [::1]:1234, got {address!r}.")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"the coordinator port must be in [1, 65535], got {address!r}.")
    return host.strip("[]"), int(port)


def process_problem(coordinator: str | None, num_processes: int | None, process_id: int | None) -> tuple[str, str] | None:
    """``(name, message)`` of the first of the three at fault, ``None`` when all are given and consistent, or none is.

    They go together; the address must be ``HOST:PORT``; there must be a
    process and the id must be one of theirs.
    """
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    missing = [name for name, value in given.items() if value is None]
    if missing and len(missing) < len(given):
        return missing[0], (
            f"coordinator, num_processes and process_id go together: set all three or none ({missing[0]} is not set)."
        )
    if coordinator is None or num_processes is None or process_id is None:
        return None
    try:
        parse_coordinator(coordinator)
    except ValueError as error:
        return "coordinator", str(error)
    if num_processes < 1:
        return "num_processes", f"num_processes must be at least 1, got {num_processes!r}."
    if not 0 <= process_id < num_processes:
        return "process_id", f"process_id must be in [0, {num_processes - 1}] for {num_processes} processes, got {process_id!r}."
    return None


def detected_launcher() -> str | None:
    """The launcher (``"slurm"``'s ``srun``, ``"ompi"``'s ``mpirun``) that started this process among several, if one did."""
    for name, variables in LAUNCHERS.items():
        if all(variable in os.environ for variable in variables) and os.environ[variables[-1]] not in ("", "1"):
            return name
    return None


def _wait_for_coordinator(host: str, port: int, timeout: float) -> None:
    """Connect to the coordinator until it answers or ``timeout`` seconds have passed (ClusterError)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"no coordinator answers at {host}:{port} after {timeout:g} s ({error.strerror or error}); "
                    "start process 0 there, or check the address."
                ) from None
        time.sleep(0.2)


def _check_port_free(host: str, port: int) -> None:
    """Process 0 listens on ``port``: refuse one already taken (ClusterError) rather than fail inside JAX."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ClusterError(f"port {port} is in use on this host: process 0 cannot listen there.") from None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: int | None = None,
) -> bool:
    """Join the processes of a run (``jax.distributed.initialize``); whether JAX now runs joined to the others.

    With ``coordinator`` (``HOST:PORT`` of process 0), ``num_processes`` and
    ``process_id``: join those. Without: where SLURM's ``srun`` or Open MPI's
    ``mpirun`` started several processes (:func:`detected_launcher`), join
    them as JAX detects them; elsewhere do nothing and return ``False``.
    Call it in every process before any other JAX computation. Where JAX is
    already distributed, the given values must be those it runs with.

    ``timeout``: seconds to wait for every process to join, after which a
    process that has stopped sending heartbeats is taken for dead, and that
    the last process waits for the others at exit (default: JAX's, 300 s to
    join, 100 s of silence). A process that finds no coordinator fails with a
    :class:`ClusterError`; JAX itself ends a process whose peers do not join
    in time, or die, with an error naming the coordination service.

    Raises:
      ValueError: the three are not all given or all ``None``, the address is
        not ``HOST:PORT``, the id is out of range, or JAX has computed already.
      ClusterError: no coordinator answered, or process 0's port is taken.
    """
    problem = process_problem(coordinator, num_processes, process_id)
    if problem is not None:
        raise ValueError(problem[1])
    if timeout is not None and timeout < 1:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    if jax.distributed.is_initialized():
        if num_processes is not None and (jax.process_count(), jax.process_index()) != (num_processes, process_id):
            raise ValueError(
                f"JAX already runs as process {jax.process_index()} of {jax.process_count()}, "
                f"not process {process_id} of {num_processes}."
            )
        return True
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        if coordinator is None:
            return False
        raise ValueError(
            "jax.distributed.initialize must come before any JAX computation, and this process has computed already; "
            "join the processes first (flowopt.training.distributed.initialize) or start a fresh process."
        )
    if coordinator is None:
        launcher = detected_launcher()
        if launcher is not None:
            _join(None, None, None, timeout, launcher)
        return launcher is not None
    host, port = parse_coordinator(coordinator)
    notice(f"Process {process_id} of {num_processes} joins the others through {coordinator} (waiting up to {timeout or 300} s).")
    if process_id == 0:
        _check_port_free(host, port)
    else:
        _wait_for_coordinator(host, port, timeout or 300)
    _join(coordinator, num_processes, process_id, timeout)
    return True


def _join(
    coordinator: str | None, num_processes: int | None, process_id: int | None, timeout: int | None, launcher: str | None = None
) -> None:
    """``jax.distributed.initialize``; ``timeout`` replaces JAX's 300 s to join, 100 s of silence and 300 s at exit."""
    if jax.config.values.get("jax_cpu_collectives_implementation") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices reduce across processes over gloo
    jax.distributed.initialize(
        coordinator,
        num_processes,
        process_id,
        cluster_detection_method=launcher,
        initialization_timeout=timeout or 300,
        heartbeat_timeout_seconds=timeout or 100,
        shutdown_timeout_seconds=timeout or 300,
    )


def agree(failure: str | None) -> str | None:
    """The failure of the first process that has one (its message, shortened), on every process; ``None`` if none failed.

    Every process must call it at the same point: each gives its own failure
    (or ``None``) and all then raise, or all go on. Without several processes,
    ``failure`` is returned unchanged.
    """
    if jax.process_count() == 1:
        return failure
    from jax.experimental import multihost_utils

    data = (failure or "").encode()[:_MESSAGE_BYTES]
    mine = np.zeros(_MESSAGE_BYTES + 1, np.uint8)
    mine[0] = failure is not None
    mine[1 : 1 + len(data)] = np.frombuffer(data, np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))
    for index, row in enumerate(every):
        if row[0]:
            text = bytes(row[1:]).rstrip(b"\0").decode(errors="replace")
            return text if index == jax.process_index() else f"process {index}: {text}"
    return None


def on_first_process(action: Callable[[], Any], error: type[Exception] = ValueError) -> Any:
    """``action()`` on process 0 (its result there, ``None`` elsewhere); if it raises ``error``, every process raises.

    Every process must call it at the same point. Process 0 raises the
    exception itself, the others an ``error`` naming it.
    """
    result, failure = None, None
    if jax.process_index() == 0:
        try:
            result = action()
        except error as caught:
            failure = caught
    shared = agree(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if shared is not None:
        raise error(shared)
    return result
