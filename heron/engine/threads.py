"""The engine's thread count follows the cores other processes leave free.

Why: the CPU kernels split each step over ``torch.get_num_threads()`` OpenMP threads that
meet at a barrier several times per layer. When another process keeps one of two cores busy,
one of our threads is descheduled for whole time slices and the other waits for it at every
barrier: one-user decode fell from about 82 to 22 tok/s beside a busy loop. One thread on
the core that is free runs at about 51 tok/s. So, between steps, the engine measures how much
of its cores other processes used (``/proc/stat`` minus this process and its parent, the
HTTP process that feeds it) and runs on the cores that remain.

The kernels give bit-identical results for any thread count (each output row is one
fixed-order computation), so changing it never changes output.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from heron import env
from heron.config import EngineConfig

logger = logging.getLogger(__name__)

# Others using this many cores (averaged over one interval) take one of ours away ...
BUSY_CORES = 0.5
# ... and we take it back once they use less than this.
QUIET_CORES = 0.25
INTERVAL_S = 0.5
# A change needs this many intervals in a row that agree, so one burst does not flip it.
CONFIRM = 2


@dataclass(slots=True, frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one instant."""

    wall: float
    busy: float  # busy time of the cores we may run on, every process together
    ours: float  # this process and its parent


def _clock_ticks() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def _process_seconds(pid: int | str, ticks: float) -> float:
    """utime + stime of a process, all its threads, in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            # the command name (field 2) may hold spaces: split after its closing ")"
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / ticks


def read_cpu_sample(cpus: frozenset[int]) -> CpuSample | None:
    """Sample ``/proc/stat`` for ``cpus`` and our own CPU time; None where /proc is missing
    (not Linux), which turns the governor off."""
    ticks = _clock_ticks()
    busy = 0.0
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *values = line.split()
                if not name[3:].isdigit() or int(name[3:]) not in cpus:
                    continue
                # user nice system idle iowait irq softirq steal: all but idle and iowait
                # are time the core was not ours to take (steal: the hypervisor's).
                v = [int(x) for x in values[:8]]
                busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    except (OSError, ValueError):
        return None
    ours = _process_seconds("self", ticks) + _process_seconds(os.getppid(), ticks)
    return CpuSample(time.monotonic(), busy / ticks, ours)


def usable_cpus() -> frozenset[int]:
    """The CPUs this process may run on."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return frozenset(range(os.cpu_count() or 1))


class ThreadGovernor:
    """Sets the intra-op thread count to the cores that other processes leave free.

    ``tick()`` is called once per engine step; it reads /proc at most once per
    ``INTERVAL_S``. Mutates the torch thread count through ``set_threads``."""

    def __init__(
        self,
        max_threads: int,
        set_threads: Callable[[int], None],
        sample: Callable[[], CpuSample | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        cpus = usable_cpus()
        self.max_threads = max_threads
        self.threads = max_threads
        self._set_threads = set_threads
        self._sample = sample or (lambda: read_cpu_sample(cpus))
        self._clock = clock
        self._last = self._sample()
        self._votes = 0  # consecutive intervals that asked for the same change
        self._wanted = max_threads

    @property
    def enabled(self) -> bool:
        return self.max_threads > 1 and self._last is not None

    def tick(self) -> None:
        """Maybe change the thread count; cheap unless an interval has passed."""
        last = self._last
        if self.max_threads <= 1 or last is None:
            return
        if self._clock() - last.wall < INTERVAL_S:
            return
        now = self._sample()
        if now is None:
            return
        self._last = now
        elapsed = now.wall - last.wall
        others = max(0.0, (now.busy - last.busy) - (now.ours - last.ours)) / elapsed
        self._decide(others)

    def _decide(self, others: float) -> None:
        wanted = self.threads
        if others >= BUSY_CORES:
            # busy neighbours only ever take threads away; a quiet interval gives them back
            wanted = min(self.threads, max(1, round(self.max_threads - others)))
        elif others < QUIET_CORES:
            wanted = self.max_threads
        if wanted == self.threads:
            self._votes = 0
            return
        self._votes = self._votes + 1 if wanted == self._wanted else 1
        self._wanted = wanted
        if self._votes >= CONFIRM:
            logger.info(
                "other processes use %.1f of %d cores: %d -> %d threads",
                others,
                self.max_threads,
                self.threads,
                wanted,
            )
            self.threads = wanted
            self._votes = 0
            self._set_threads(wanted)


def make_governor(config: EngineConfig) -> ThreadGovernor | None:
    """The governor for an engine process, or None when the thread count is fixed: set in
    the config (``num_threads``), one thread, ``HERON_ADAPTIVE_THREADS=0``, or no /proc."""
    if config.num_threads is not None or not env.adaptive_threads():
        return None
    governor = ThreadGovernor(torch.get_num_threads(), torch.set_num_threads)
    return governor if governor.enabled else None
