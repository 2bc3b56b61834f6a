"""Evaluation: the lm-evaluation-harness model ``mambakit``, the paper's table, exact perplexity.

Rooms: ``scoring.py`` (log-probabilities on the recurrent state: shared contexts run once, long text
carried across chunks), ``harness.py`` (the lm-eval model), ``tasks/`` (lm-eval task YAMLs over local
jsonl files), ``paper.py`` (the Mamba paper's published zero-shot numbers), ``perplexity.py`` (perplexity
of long text and the loss by token position), ``commands.py`` (``mambakit eval`` and ``mambakit eval ppl``).

Importing this package registers ``mambakit`` in lm-eval's model registry when lm-eval is installed, as a
lazy "module:Class" entry (next to lm-eval's own lazy entries): ``harness.py`` and lm-eval's model modules
are imported only when lm-eval asks for a model, so ``import mambakit`` stays fast and does not need lm-eval.
"""
from __future__ import annotations

import importlib.util

HARNESS_MODEL_NAME = "mambakit"
HARNESS_MODEL_TARGET = "mambakit.eval.harness:MambaKitLM"


def register_harness_model() -> bool:
    """Register the ``mambakit`` lm-eval model; False when lm-eval is absent or too old to have a registry."""
    if importlib.util.find_spec("lm_eval") is None:
        return False
    try:
        import lm_eval.models  # noqa: F401  lm-eval's own names first: it adds them only to an empty registry
        from lm_eval.api.registry import model_registry
    except Exception:  # an old or broken lm-eval must not break ``import mambakit``
        return False
    if HARNESS_MODEL_NAME not in model_registry:
        model_registry.register(HARNESS_MODEL_NAME, target=HARNESS_MODEL_TARGET)
    return True


register_harness_model()
