"""The ``mambakit`` lm-evaluation-harness model against lm-eval's own ``hf`` model on the same checkpoint."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import mambakit  # noqa: E402
from mambakit.eval.harness import HarnessError, MambaKitLM  # noqa: E402
from mambakit.eval.tasks import DATA_DIR_KEY, TASKS_DIR  # noqa: E402

NEOX_PADDED_VOCAB = 50280  # the state-spaces checkpoints' embedding rows for the GPT-NeoX tokenizer
_CHECKPOINTS = {}


@pytest.fixture
def neox_checkpoint(shared_data, tmp_path_factory):
    """A tiny random HF MambaForCausalLM with the GPT-NeoX tokenizer, saved once in HF format."""
    if "folder" not in _CHECKPOINTS:
        folder = tmp_path_factory.mktemp("neox-mamba")
        torch.manual_seed(0)
        config = transformers.MambaConfig(vocab_size=NEOX_PADDED_VOCAB, hidden_size=32, state_size=8,
                                          num_hidden_layers=2, expand=2, conv_kernel=4, pad_token_id=0,
                                          bos_token_id=0, eos_token_id=0)
        transformers.MambaForCausalLM(config).eval().save_pretrained(folder)
        transformers.AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "gpt-neox-20b").save_pretrained(folder)
        _CHECKPOINTS["folder"] = folder
    return _CHECKPOINTS["folder"]


def _document_loglikelihoods(samples: list[dict]) -> np.ndarray:
    """lm-eval's logged samples -> (docs, requests per doc) array of loglikelihoods, in doc order."""
    rows = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        rows.append([resp[0][0] if isinstance(resp[0], (list, tuple)) else resp[0] for resp in sample["resps"]])
    return np.array(rows, dtype=np.float64)


def test_mambakit_matches_lm_eval_hf_model_per_document_and_in_task_scores(neox_checkpoint, shared_data):
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                          metadata={DATA_DIR_KEY: str(shared_data / "eval")})
    tasks = ["mambakit_piqa", "mambakit_lambada_rolling", "mambakit_lambada_openai"]
    outputs = {name: lm_eval.simple_evaluate(model=name, model_args=f"pretrained={neox_checkpoint},dtype=float32",
                                             device="cpu", batch_size=4, tasks=tasks, limit=6, task_manager=manager,
                                             log_samples=True, bootstrap_iters=0)
               for name in ("mambakit", "hf")}
    ours, theirs = outputs["mambakit"], outputs["hf"]
    for task in tasks:
        mine, reference = (_document_loglikelihoods(o["samples"][task]) for o in (ours, theirs))
        assert mine.shape == reference.shape and mine.shape[0] == 6
        # 1e-4 absolute; rolling totals reach ~1e3, where fp32 (hf sums in fp32) resolves only ~6e-5
        np.testing.assert_allclose(mine, reference, rtol=1e-7, atol=1e-4)
        for metric, value in theirs["results"][task].items():
            if isinstance(value, float) and "stderr" not in metric:
                assert math.isclose(ours["results"][task][metric], value, rel_tol=1e-5), (task, metric)
    assert ours["results"]["mambakit_piqa"]["acc,none"] == theirs["results"]["mambakit_piqa"]["acc,none"]


def test_generate_until_stops_at_the_stop_sequence_while_generating(neox_checkpoint, monkeypatch):
    lm = MambaKitLM(pretrained=str(neox_checkpoint), device="cpu", dtype="float32")
    options = {"max_gen_toks": 40, "do_sample": True, "temperature": 1.0, "seed": 3}

    def generate(until):
        return lm.generate_until([Instance("generate_until", {}, ("The cat sat on the", {**options, "until": until}),
                                           0)], disable_tqdm=True)[0]

    free = generate(["a stop string that never comes"])
    start = next(k for k in range(len(free) // 2, len(free) - 4)
                 if free[k:k + 4].isascii() and free[k:k + 4].isalnum() and free.find(free[k:k + 4]) == k)
    stop = free[start:start + 4]
    steps = []
    real_step = lm.model.step
    monkeypatch.setattr(lm.model, "step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    stopped = generate([stop])
    assert stopped == free[:start]
    tokens_to_stop = len(lm.tokenizer.encode(free[:start + len(stop)], add_special_tokens=False))
    assert len(steps) <= tokens_to_stop + 1 < options["max_gen_toks"] - 1


def test_loglikelihood_rolling_is_the_full_sequence_loss():
    lm = MambaKitLM(pretrained="mambakit:tiny-random", device="cpu", dtype="float32", tokens_per_forward=8)
    text = "A recurrent state carries the past; no window is needed. " * 4
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    ids = torch.tensor([[lm.prefix_token_id] + lm.tok_encode(text)])
    with torch.no_grad():
        loss = float(lm.model(ids, labels=ids).loss)
    assert math.isclose(total, -loss * (ids.shape[1] - 1), rel_tol=1e-5)


def test_mambakit_model_is_registered_lazily_on_import_beside_lm_evals_own():
    assert lm_eval.api.registry.get_model("mambakit") is MambaKitLM
    code = ("import sys, mambakit; from lm_eval.api.registry import get_model, model_registry; "
            "print('mambakit' in model_registry, 'mambakit.eval.harness' in sys.modules, "
            "'lm_eval.models.huggingface' in sys.modules, get_model('hf').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False", "HFLM"]


def test_an_already_loaded_model_can_be_evaluated_and_bad_arguments_are_user_errors():
    model, tokenizer, _ = mambakit.load("mambakit:tiny-random", device="cpu")
    lm = MambaKitLM(pretrained=model, tokenizer=tokenizer, batch_size="auto:4", max_batch_size=8)
    assert lm.model is model and lm.batch_size == 8
    (score,) = lm.loglikelihood([Instance("loglikelihood", {}, ("Hello", " world"), 0)], disable_tqdm=True)
    assert score[0] < 0 and isinstance(score[1], bool)
    with pytest.raises(HarnessError, match="unknown model_args.*max_length"):
        MambaKitLM(pretrained=model, tokenizer=tokenizer, max_length=2048)
    with pytest.raises(HarnessError, match="needs its tokenizer"):
        MambaKitLM(pretrained=model)
    with pytest.raises(HarnessError, match="batch_size"):
        MambaKitLM(pretrained=model, tokenizer=tokenizer, batch_size="many")
    with pytest.raises(HarnessError, match="num_beams"):
        lm.sampling_params({"until": ["\n"], "num_beams": 4}, "<|endoftext|>")
    params = lm.sampling_params({"until": "\n\n", "max_gen_toks": 7, "top_k": 5}, "<|endoftext|>")
    assert (params.stop, params.max_new_tokens, params.temperature, params.top_k) == (
        ["\n\n", "<|endoftext|>"], 7, 0.0, 5)
