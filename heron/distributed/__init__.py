"""Tensor parallelism: one model's attention heads and MLP columns split across processes.

Rank 0 is the engine core as ever (scheduler, sampler, KV manager); ranks 1..N-1 are worker
processes (``worker``) that hold their shard of the weights and of the KV cache and run the
same forward each step from the inputs rank 0 broadcasts (``group``). ``shard`` says which
slice of each checkpoint tensor a rank keeps and adds the all-reduces after the row-parallel
linears.
"""
