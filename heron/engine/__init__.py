from heron.engine.llm import LLM
from heron.engine.llm_engine import LLMEngine

__all__ = ["LLM", "LLMEngine"]
