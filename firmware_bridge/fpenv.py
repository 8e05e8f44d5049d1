"""Flush denormal floats to zero on the thread that runs the step graph.

Why: a robot at rest feeds the learn graph the same observation tick after tick; eligibility
traces whose gradient is (nearly) zero decay by gamma * lambda every tick and pass through the
subnormal range (|x| < 1.18e-38 in float32) on their way to zero. Measured on the paper-size
agent: 36,000 subnormal floats in the learn state after 1,500 ticks at rest, 70,000 with every
step input zero. Many CPUs run arithmetic on subnormals through a slow microcode path
(issue: 679 us -> 1,903 us per learn step); others (the AMD Zen 5 this was measured on) do not.

The fix sets the CPU's flush-to-zero flags on the calling thread, so the step time no longer
depends on what the robot is doing and numbers change only for values below 1.18e-38:

- x86-64 Linux: MXCSR FTZ (bit 15) and DAZ (bit 6), through libm's fegetenv/fesetenv (fenv_t
  holds MXCSR at byte 28 in glibc and musl). Tested.
- AArch64 Linux: FPCR.FZ (bit 24), which on AArch64 flushes subnormal inputs and results of
  scalar and Advanced SIMD float arithmetic (fenv_t holds FPCR at byte 0). Not tested here.
- anywhere else: nothing is changed and `FlushState.active` is False.

After setting the flags, a probe on the same thread checks that a subnormal result really
becomes zero; if not, the previous environment is restored and `active` is False.

The flags belong to one thread. onnxruntime with one intra-op thread (`session_options`) runs
the graph on the caller's thread, so set them on the thread that calls `StepRunner.step`, and
only after the process's first InferenceSession exists: the first session a process creates
writes the flags of its thread from the ``session.set_denormal_as_zero`` option (default off),
clearing flags set before it, and later sessions ignore the option (measured, onnxruntime 1.32).

Robot path: ctypes, numpy and the standard library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["FlushState", "flush_denormals", "denormals_flushed", "mechanism", "subnormal_count"]

_FENV_BYTES = 64  # larger than fenv_t on every supported platform (32 on x86-64, 8 on AArch64)
# platform.machine() -> (byte offset of the control register in fenv_t, its width, the bits)
_LAYOUTS = {
    "x86_64": (28, 4, 0x8040, "MXCSR FTZ|DAZ"),
    "amd64": (28, 4, 0x8040, "MXCSR FTZ|DAZ"),
    "aarch64": (0, 4, 1 << 24, "FPCR.FZ"),
    "arm64": (0, 4, 1 << 24, "FPCR.FZ"),
}


def _layout():
    if not sys.platform.startswith("linux"):
        return None
    return _LAYOUTS.get(platform.machine().lower())


def mechanism() -> str | None:
    """What `flush_denormals` sets on this platform (e.g. ``"MXCSR FTZ|DAZ"``), or None."""
    layout = _layout()
    return None if layout is None else layout[3]


def denormals_flushed() -> bool:
    """Whether float32 arithmetic on this thread turns a subnormal result into zero."""
    a = np.full(4, 1e-20, np.float32)
    with np.errstate(all="ignore"):
        return bool((a * a)[0] == 0.0)


FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


def subnormal_count(state: Mapping[str, np.ndarray]) -> int:
    """Nonzero floats below the smallest normal float32 in magnitude."""
    total = 0
    for v in state.values():
        a = np.asarray(v)
        if np.issubdtype(a.dtype, np.floating):
            total += int(np.count_nonzero((a != 0) & (np.abs(a) < FLOAT32_TINY)))
    return total


_libm = None


def _lib():
    global _libm
    if _libm is None:
        try:
            lib = ctypes.CDLL("libm.so.6")  # glibc; find_library spawns a subprocess
        except OSError:
            lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so")
        for fn in (lib.fegetenv, lib.fesetenv):
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = ctypes.c_int
        _libm = lib
    return _libm


@dataclass
class FlushState:
    """What `flush_denormals` did; `restore()` puts the thread's previous environment back."""

    requested: bool  # flush (True) or keep (False) subnormals
    active: bool  # subnormals are flushed on this thread now (checked by a probe)
    mechanism: str | None  # the flags set, e.g. "MXCSR FTZ|DAZ"; None where unsupported
    _saved: object = None

    def restore(self) -> None:
        if self._saved is not None:
            _lib().fesetenv(self._saved)
            self._saved = None

    def __enter__(self) -> FlushState:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def describe(self) -> str:
        if self.active:
            return f"flushed ({self.mechanism})"
        if not self.requested:
            return "kept (not flushed, as asked)"
        if self.mechanism is None:
            return f"kept (no flush-to-zero support for {sys.platform} {platform.machine()})"
        return f"kept ({self.mechanism} did not take effect)"


def flush_denormals(on: bool = True) -> FlushState:
    """Set (``on``) or clear the flush-to-zero flags of the calling thread.

        Returns a `FlushState`; use it as a context manager or call `restore()` to put the
        previous floating-point environment back. Never raises for an unsupported platform. Threads
    started while the flags are set inherit them (Linux copies the FP environment on clone).
    """
    layout = _layout()
    if layout is None:
        return FlushState(on, denormals_flushed(), None)
    offset, width, bits, name = layout
    try:
        lib = _lib()
        saved = ctypes.create_string_buffer(_FENV_BYTES)
        if lib.fegetenv(saved) != 0:
            return FlushState(on, denormals_flushed(), None)
    except (OSError, AttributeError):
        return FlushState(on, denormals_flushed(), None)
    env = ctypes.create_string_buffer(saved.raw, _FENV_BYTES)
    reg = int.from_bytes(env.raw[offset : offset + width], "little")
    reg = reg | bits if on else reg & ~bits
    ctypes.memmove(ctypes.addressof(env) + offset, reg.to_bytes(width, "little"), width)
    state = FlushState(on, False, name, _saved=saved)
    if lib.fesetenv(env) != 0:
        state.restore()
        state.active = denormals_flushed()
        return state
    state.active = denormals_flushed()
    if on and not state.active:  # the flags did not do what they should: leave things as found
        state.restore()
    return state
