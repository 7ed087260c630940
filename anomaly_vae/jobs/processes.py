"""Several stream scorer processes on one machine, started and stopped as one command.

One Python process scores a topic on about one core: kafka-python's consumer and the scoring
share its interpreter lock. ``anomaly-vae stream --processes N`` starts N scorer processes in
the same consumer group, so the group spreads the topic's partitions over them exactly as it
does over processes on several machines: the same commits after durable writes, the same
idempotent keys, so a rebalance loses and doubles nothing.

The supervisor starts each child with the same command line and ``ANOMALY_VAE_STREAM_PROCESS``
set to ``i/N`` (a child never starts children of its own), forwards SIGTERM and SIGINT to them
(each finishes the batch in hand, commits and exits), and exits with the first non-zero status
of a child, else 0. A signal while the children start: no more are started, each one started is
told to stop, and one that the signal ended before it could catch it (still loading) counts as
a clean stop. A child that dies leaves its partitions to the others (the group moves
them); the supervisor says so and keeps the others running. On Linux the children are asked
to stop (SIGTERM) if the supervisor itself is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

logger = logging.getLogger(__name__)

CHILD_ENV = "ANOMALY_VAE_STREAM_PROCESS"


def child_label() -> str | None:
    """``i/N`` in a child started by ``run_processes``, else None."""
    return os.environ.get(CHILD_ENV) or None


def _stop_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_processes(args: Sequence[str], n: int, *, poll_s: float = 0.2) -> int:
    """Run ``python -m anomaly_vae *args`` as ``n`` child processes until all have exited."""
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for i in range(n):
            if stopping:  # a signal came while the others started: start no more
                break
            env = {**os.environ, CHILD_ENV: f"{i + 1}/{n}"}
            child = subprocess.Popen(
                [sys.executable, "-m", "anomaly_vae", *args],
                env=env,
                preexec_fn=_stop_with_parent if sys.platform == "linux" else None,
            )
            children.append(child)
            if stopping:  # the signal came while this one started: forward() missed it
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
        logger.info(
            "started %d scorer processes (pids %s)", len(children), [c.pid for c in children]
        )
        reported: set[int] = set()
        while True:
            running = 0
            for i, child in enumerate(children):
                code = child.poll()
                if code is None:
                    running += 1
                elif i not in reported:
                    reported.add(i)
                    if stopping and code in (-signal.SIGTERM, -signal.SIGINT):
                        # Stopped by the signal passed on, before it could catch it (still
                        # starting up): nothing was read, a clean stop.
                        continue
                    if code != 0:
                        status = status or (code if code > 0 else 128 - code)
                        if not stopping:
                            logger.error(
                                "scorer process %d/%d (pid %d) exited with status %d: the "
                                "group moves its partitions to the others",
                                i + 1,
                                n,
                                child.pid,
                                code,
                            )
            if not running:
                return status
            time.sleep(poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in children:
            if child.poll() is None:  # the supervisor itself is failing: stop them cleanly
                child.terminate()
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
