"""One step's forward inputs as one int64 tensor, for rank 0 to broadcast to the workers.

Layout: ``[num_tokens, num_seqs, num_decodes, block_size, width]`` then input_ids, positions,
slot_mapping (each [num_tokens]), query_lens, context_lens, table_lens (each [num_seqs]) and
the block tables padded to ``width`` ([num_seqs * width]). Workers rebuild the same
``AttentionBatch`` and run the attention backend's own ``prepare_metadata`` on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from heron.attention import AttentionBatch

_HEADER = 5


@dataclass(slots=True)
class StepInputs:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    attention: AttentionBatch


def pack_step(
    input_ids: torch.Tensor, positions: torch.Tensor, batch: AttentionBatch
) -> torch.Tensor:
    """The step as one int64 tensor (the layout above)."""
    num_seqs = len(batch.query_lens)
    table_lens = np.fromiter((len(t) for t in batch.block_tables), np.int64, num_seqs)
    width = int(table_lens.max()) if num_seqs else 0
    tables = np.zeros((num_seqs, width), np.int64)
    mask = np.arange(width) < table_lens[:, None]
    tables[mask] = np.fromiter(
        (b for t in batch.block_tables for b in t), np.int64, int(table_lens.sum())
    )
    head = np.array(
        [input_ids.numel(), num_seqs, batch.num_decodes, batch.block_size, width], np.int64
    )
    parts = [
        head,
        input_ids.numpy(),
        positions.numpy(),
        batch.slot_mapping.numpy(),
        np.asarray(batch.query_lens, np.int64),
        np.asarray(batch.context_lens, np.int64),
        table_lens,
        tables.reshape(-1),
    ]
    return torch.from_numpy(np.concatenate(parts))


def unpack_step(packed: torch.Tensor) -> StepInputs:
    """Inverse of ``pack_step``."""
    flat = packed.numpy()
    num_tokens, num_seqs, num_decodes, block_size, width = (int(v) for v in flat[:_HEADER])
    at = _HEADER
    cuts = [num_tokens] * 3 + [num_seqs] * 3 + [num_seqs * width]
    pieces = []
    for size in cuts:
        pieces.append(flat[at : at + size])
        at += size
    ids, pos, slots, query_lens, context_lens, table_lens, tables = pieces
    rows = tables.reshape(num_seqs, width)
    batch = AttentionBatch(
        query_lens=query_lens.tolist(),
        context_lens=context_lens.tolist(),
        block_tables=[rows[i, : int(n)].tolist() for i, n in enumerate(table_lens)],
        num_decodes=num_decodes,
        slot_mapping=torch.from_numpy(slots.copy()),
        block_size=block_size,
    )
    return StepInputs(torch.from_numpy(ids.copy()), torch.from_numpy(pos.copy()), batch)
