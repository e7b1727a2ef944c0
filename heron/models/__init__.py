from heron.models.registry import build_model, get_model_class, supported_architectures

__all__ = ["build_model", "get_model_class", "supported_architectures"]
