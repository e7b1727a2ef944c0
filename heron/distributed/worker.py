"""A tensor-parallel worker process (ranks 1..N-1): ``python -m heron.distributed.worker RANK
SIZE PORT CHECKPOINT``, with the ``EngineConfig`` as msgpack on stdin.

It builds its shard of the model and of the KV cache (a ``ModelRunner`` joined to the group),
then runs the forward of every step rank 0 broadcasts until rank 0 stops it. It samples
nothing and computes no logits: rank 0 does.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

import torch

from heron.distributed.group import TensorParallelGroup
from heron.distributed.step import unpack_step
from heron.loader import load_checkpoint
from heron.runner.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """Linux: get SIGKILL when rank 0 (the parent) dies, however it dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the parent died before prctl
        os._exit(1)


def serve_steps(runner: ModelRunner, group: TensorParallelGroup) -> int:
    """Run the forward of each step rank 0 sends (writing this rank's KV shard); returns the
    number of steps run when rank 0 stops the group."""
    steps = 0
    with torch.inference_mode():
        while (packed := group.recv_step()) is not None:
            step = unpack_step(packed)
            metadata = runner.backend.prepare_metadata(step.attention)
            runner.model(step.input_ids, step.positions, runner.kv_caches, runner.backend, metadata)
            steps += 1
    return steps


def main(argv: list[str]) -> int:
    rank, size, port = (int(a) for a in argv[:3])
    path = argv[3]
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when to stop
    logging.basicConfig(
        level=logging.INFO, format=f"%(levelname)s rank{rank} %(name)s: %(message)s"
    )
    config = TensorParallelGroup.decode_config(sys.stdin.buffer.read())
    group = TensorParallelGroup.join(rank, size, port)
    try:
        checkpoint = load_checkpoint(path)
        runner = ModelRunner(checkpoint.config, checkpoint.weights, config, checkpoint.path, group)
    except Exception as exc:
        group.mark_loaded(f"{type(exc).__name__}: {exc}")
        return 1
    group.mark_loaded()
    serve_steps(runner, group)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
