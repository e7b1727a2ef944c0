"""Speculative decoding proposers: cheap guesses of a request's next tokens, which the
engine verifies in one forward pass (see ``heron.runner.rejection``)."""

from heron.proposer.base import Proposer, SpeculativeConfig
from heron.proposer.registry import build_proposer

__all__ = ["Proposer", "SpeculativeConfig", "build_proposer"]
