"""Generation: sampling options and logit processing (sampling.py), prefill/decode/streaming (generator.py)."""
from mambakit.generation.generator import GenerationError, GenerationResult, Generator
from mambakit.generation.sampling import LogitProcessor, SamplingError, SamplingParams

__all__ = ["GenerationError", "GenerationResult", "Generator", "LogitProcessor", "SamplingError", "SamplingParams"]
