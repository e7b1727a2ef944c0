"""The embedding engine: token ids in, one pooled vector per input out.

An encoder has no KV cache and no decode loop: a batch of inputs is sorted by length, cut
into groups of at most ``token_budget`` padded tokens, and each group is one right-padded
forward with an attention mask, followed by pooling (and normalisation) as the checkpoint's
sentence-transformers files say. Inputs longer than the context are cut (keeping the
tokenizer's trailing special token, e.g. BERT's ``[SEP]``, as HF truncation does) or refused.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import torch

from heron.config import EngineConfig
from heron.kvcache.plan import embedding_max_len
from heron.layers.linear import Linear
from heron.layers.pooling import pool
from heron.loader import CheckpointError, load_checkpoint
from heron.loader.pooling import load_pooling_config
from heron.models.registry import build_embedding_model, is_embedding_architecture
from heron.tokenizer import Tokenizer
from heron.tokenizer.fit import fit_to_context, special_suffix_len

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_embedding_checkpoint(path: str) -> bool:
    """Whether ``path`` (a resolved model path) is an encoder checkpoint served for
    embeddings. Reads only ``config.json``; anything unreadable counts as not an encoder, and
    the real loader reports it."""
    if not os.path.isdir(path):
        return False  # GGUF files: every supported GGUF architecture generates
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            archs = json.load(f).get("architectures")
    except (OSError, ValueError, AttributeError):
        return False
    return bool(archs) and isinstance(archs, list) and is_embedding_architecture(str(archs[0]))


class EmbeddingEngine:
    """Loads an encoder checkpoint (an HF directory path, already resolved) and embeds
    batches of inputs."""

    def __init__(self, model_path: str, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        if self.config.tensor_parallel_size != 1:
            raise ValueError(
                "tensor parallelism is for generation models; an embedding model runs in one process"
            )
        t0 = time.perf_counter()
        self.checkpoint = load_checkpoint(model_path)
        self.model_config = self.checkpoint.config
        arch = self.model_config.architecture
        if not is_embedding_architecture(arch):
            raise ValueError(f"{arch!r} is not an embedding model: it does not support embeddings")
        if self.checkpoint.format != "hf":
            raise CheckpointError(f"{arch}: embedding models load from HF checkpoint directories")
        self.tokenizer = Tokenizer.from_checkpoint(self.checkpoint)
        self.pooling = load_pooling_config(self.checkpoint.path)
        self.max_model_len = embedding_max_len(self.model_config, self.config)
        self.embedding_dim = self.pooling.output_dim(self.model_config.hidden_size)
        self.suffix_len = special_suffix_len(self.tokenizer)
        # Padded tokens per forward: bounds activation memory; one input always fits.
        self.token_budget = max(self.config.scheduler.max_num_batched_tokens, self.max_model_len)
        if self.config.num_threads is not None:
            torch.set_num_threads(self.config.num_threads)
        self.model = build_embedding_model(self.model_config)
        self.model.load_weights(self.checkpoint.weights())
        self.model.to(_DTYPES[self.config.dtype])
        if self.config.quantization == "int8":
            # NOTE(heron): measured on all-MiniLM-L6-v2, int8 vectors are only ~0.94-0.97
            # cosine-similar to fp32 ones (bf16: 0.9999); applied as asked, with a warning.
            logger.warning("int8 quantization lowers embedding quality noticeably")
            for module in self.model.modules():
                if isinstance(module, Linear):
                    module.quantize_int8()
        self.model.eval()
        logger.info("embedding engine ready in %.1f s", time.perf_counter() - t0)

    # ------------------------------------------------------------------ inputs
    def encode(self, text: str, truncate: bool = True) -> list[int]:
        """Token ids of ``text`` with the tokenizer's special tokens, fitted to the context."""
        ids = self.tokenizer.encode(text)
        return fit_to_context(ids, self.max_model_len, truncate, self.suffix_len)

    def check_inputs(self, batch: Sequence[Sequence[int]]) -> None:
        """Raise ValueError unless every input is 1..max_model_len ids in the vocabulary."""
        vocab = self.model_config.vocab_size
        for i, ids in enumerate(batch):
            if not ids:
                raise ValueError(f"input {i} is empty")
            if len(ids) > self.max_model_len:
                raise ValueError(
                    f"input {i} has {len(ids)} tokens, above the context length "
                    f"{self.max_model_len}"
                )
            if any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
                raise ValueError(f"input {i}: token ids must be integers in [0, {vocab})")

    def groups(self, batch: Sequence[Sequence[int]]) -> list[list[int]]:
        """Input indices in forward groups: by length, each group's padded size (rows times
        its longest input) within ``token_budget``."""
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        groups: list[list[int]] = []
        current: list[int] = []
        for i in order:  # ascending length: the newest input is the group's longest
            if current and (len(current) + 1) * len(batch[i]) > self.token_budget:
                groups.append(current)
                current = []
            current.append(i)
        if current:
            groups.append(current)
        return groups

    # ------------------------------------------------------------------ forward
    @torch.inference_mode()
    def embed_token_ids(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        """One vector (``embedding_dim`` floats) per input, in input order."""
        self.check_inputs(batch)
        out: list[list[float]] = [[] for _ in batch]
        for group in self.groups(batch):
            vectors = self.forward([batch[i] for i in group]).tolist()
            for i, vec in zip(group, vectors, strict=True):
                out[i] = vec
        return out

    def forward(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """One padded forward and pooling: float32 [len(seqs), embedding_dim]."""
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        mask = np.arange(lengths.max())[None, :] < lengths[:, None]  # [batch, longest]
        ids = np.zeros(mask.shape, dtype=np.int64)  # padding: id 0, never attended
        ids[mask] = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])  # row-major
        mask_t = torch.from_numpy(mask)
        hidden = self.model(torch.from_numpy(ids), mask_t)  # [batch, longest, hidden]
        return pool(hidden, mask_t, self.pooling)

    def embed(self, texts: Sequence[str], truncate: bool = True) -> list[list[float]]:
        """Tokenize, fit and embed ``texts``."""
        return self.embed_token_ids([self.encode(t, truncate) for t in texts])
