"""The thread governor: exact decisions from scripted CPU samples, and a real busy process."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from heron.engine.threads import CpuSample, ThreadGovernor, read_cpu_sample, usable_cpus


class Script:
    """CPU samples half a second apart in which others use ``cores[i]`` of the machine."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.busy = 0.0
        self.ours = 0.0
        self.next_others = 0.0

    def sample(self) -> CpuSample:
        return CpuSample(self.wall, self.busy, self.ours)

    def advance(self, others: float, ours: float = 1.0) -> None:
        self.wall += 0.5
        self.busy += 0.5 * (others + ours)
        self.ours += 0.5 * ours


def governor(script: Script, max_threads: int = 2) -> tuple[ThreadGovernor, list[int]]:
    calls: list[int] = []
    g = ThreadGovernor(max_threads, calls.append, script.sample, clock=lambda: script.wall)
    return g, calls


def run(g: ThreadGovernor, script: Script, others: list[float]) -> None:
    for value in others:
        script.advance(value)
        g.tick()


def test_quiet_machine_keeps_every_thread() -> None:
    script = Script()
    g, calls = governor(script)
    run(g, script, [0.0, 0.1, 0.2, 0.0])
    assert calls == [] and g.threads == 2


def test_busy_neighbour_takes_one_thread_after_two_intervals_and_quiet_gives_it_back() -> None:
    script = Script()
    g, calls = governor(script)
    run(g, script, [1.0])
    assert calls == []  # one interval is not enough
    run(g, script, [0.8])
    assert calls == [1] and g.threads == 1
    # beside the neighbour on one thread: others stay at one core, or in between
    run(g, script, [1.0, 0.4, 1.0, 0.4])
    assert calls == [1]
    run(g, script, [0.1])
    assert calls == [1]
    run(g, script, [0.0])
    assert calls == [1, 2] and g.threads == 2


def test_a_single_burst_changes_nothing() -> None:
    script = Script()
    g, calls = governor(script)
    run(g, script, [1.0, 0.0, 1.0, 0.0, 1.0, 0.1])
    assert calls == []


def test_more_cores_lose_as_many_threads_as_others_take() -> None:
    script = Script()
    g, calls = governor(script, max_threads=8)
    run(g, script, [2.6, 2.6])
    assert calls == [5]
    run(g, script, [0.7, 0.7])  # a lighter load does not take threads back: only quiet does
    assert calls == [5]


def test_ticks_within_an_interval_do_not_sample() -> None:
    script = Script()
    samples: list[int] = []

    def sample() -> CpuSample:
        samples.append(1)
        return script.sample()

    g = ThreadGovernor(2, lambda n: None, sample, clock=lambda: script.wall)
    for _ in range(100):
        g.tick()
    assert len(samples) == 1  # the first, at construction


def test_one_thread_or_no_proc_turns_it_off() -> None:
    assert not ThreadGovernor(1, lambda n: None, Script().sample).enabled
    assert not ThreadGovernor(2, lambda n: None, lambda: None).enabled


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_real_busy_process_counts_as_others() -> None:
    cpus = usable_cpus()
    before = read_cpu_sample(cpus)
    assert before is not None
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        after = read_cpu_sample(cpus)
    finally:
        busy.kill()
        busy.wait()
    assert after is not None
    elapsed = after.wall - before.wall
    others = ((after.busy - before.busy) - (after.ours - before.ours)) / elapsed
    assert others >= 0.5, others


@pytest.mark.slow
def test_thread_count_never_changes_output(smollm2_path: str) -> None:
    """The governor may switch between steps: every thread count gives the same logprobs."""
    import torch

    from heron.engine.llm import LLM
    from heron.sampling_params import SamplingParams

    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    params = SamplingParams(max_tokens=24, temperature=0.0, logprobs=2)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (threads, 1):
            llm = LLM(smollm2_path, num_threads=n)
            outputs = llm.generate(prompts, params)
            runs.append([(o.outputs[0].token_ids, repr(o.outputs[0].logprobs)) for o in outputs])
            del llm
    finally:
        torch.set_num_threads(threads)
    assert runs[0] == runs[1]
