"""Batch jobs keep large freed buffers for the next chunk (glibc's allocator, ``jobs.memory``)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or "libc.so" not in (ctypes.util.find_library("c") or ""),
    reason="glibc only",
)

# Frees a 48 MiB array and reports how much free memory the heap keeps afterwards (mallinfo2):
# glibc's default returns a buffer that large to the kernel at once.
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import numpy as np
    from anomaly_vae.jobs.memory import reuse_freed_memory

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        ).split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info

    def kept_after_free():
        block = np.ones(48 << 17)
        del block
        return libc.mallinfo2().fordblks >> 20

    before = kept_after_free()
    applied = reuse_freed_memory()
    print(before, applied, kept_after_free())
    """
)


def _probe(env: dict[str, str]) -> tuple[int, bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), out[1] == "True", int(out[2])


def test_freed_buffers_stay_in_the_heap_for_reuse() -> None:
    before, applied, after = _probe({})
    assert before < 16  # the default: the freed 48 MiB went back to the kernel
    assert applied
    assert after >= 48


def test_the_users_own_allocator_settings_win() -> None:
    _, applied, after = _probe({"MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": "131072"})
    assert not applied
    assert after < 16
