from heron.runner.model_runner import ModelRunner
from heron.runner.sampler import Sampler, SamplerOutput, SamplingBatch

__all__ = ["ModelRunner", "Sampler", "SamplerOutput", "SamplingBatch"]
