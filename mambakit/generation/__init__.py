"""Generation: sampling options and logit processing (sampling.py), prefill/decode/streaming (generator.py),
CUDA graphs (cuda_graph.py, prefill.py), a row's text and stop strings (row_text.py)."""
from mambakit.generation.generator import GenerationError, GenerationResult, Generator
from mambakit.generation.sampling import LogitProcessor, SamplingError, SamplingParams

__all__ = ["GenerationError", "GenerationResult", "Generator", "LogitProcessor", "SamplingError", "SamplingParams"]
