"""mambakit: Mamba-family language models on one GPU or a CPU, with no compilation.

    model, tokenizer, chat_template = mambakit.load("state-spaces/mamba-1.4b")
"""
__version__ = "0.1.0"

from mambakit.config import ConfigError, MambaConfig
from mambakit.generation import Generator, SamplingParams
from mambakit.loading import LoadedModel, load, load_model
from mambakit.model import MambaLM
from mambakit.state import InferenceState
import mambakit.eval  # noqa: E402,F401  registers the "mambakit" lm-eval model if lm-eval is installed

__all__ = ["ConfigError", "Generator", "InferenceState", "LoadedModel", "MambaConfig", "MambaLM",
           "SamplingParams", "load", "load_model"]
