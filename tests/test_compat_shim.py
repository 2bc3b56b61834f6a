"""The import shim: unmodified mamba_ssm code runs on mambakit. In process: the aliases, the refusal of
unsupported paths, never shadowing a real mamba_ssm. As subprocesses through ``python -m mambakit.compat``:
the seed's tutorial script on a tiny GPT-NeoX-vocabulary checkpoint, and lm-eval's built-in ``mamba_ssm``
model on two local tasks (its log-likelihoods and generations checked against the model directly)."""
import importlib
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import mambakit.compat
from mambakit.compat import shim
from mambakit.compat.__main__ import main as compat_main
from mambakit.compat.errors import CompatError
from conftest import SHARED_DATA
from test_compat_model import hf_neox_sized_model, save_neox_checkpoint

SEED_SCRIPT = '''\
import sys

import torch
from transformers import AutoTokenizer

from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

model_dir, tokenizer_dir = sys.argv[1], sys.argv[2]
device = "cpu"
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
model = MambaLMHeadModel.from_pretrained(model_dir, device=device, dtype=torch.float32)
input_ids = tokenizer("Mamba is a new architecture that", return_tensors="pt").input_ids.to(device)
out = model.generate(input_ids=input_ids, max_length=70, cg=True, output_scores=True, enable_timing=False,
                     temperature=0.7, top_k=40, top_p=0.1)
print(tokenizer.batch_decode(out.tolist())[0])
print("RESULT", tuple(out.shape), MambaLMHeadModel.__module__)
'''

TASKS = {
    "compat_lambada": "output_type: loglikelihood\n",
    "compat_continue": "output_type: generate_until\ngeneration_kwargs:\n  until: ['\\n\\n']\n  max_gen_toks: 5\n"
                       "  do_sample: false\n  temperature: 0.0\n",
}
TASK_COMMON = """\
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: {metric}
"""


@pytest.fixture
def clean_shim():
    """Leaves no finder and no mamba_ssm / causal_conv1d modules behind."""
    yield
    shim.uninstall()
    for package in shim.PACKAGES:
        for name in [n for n in sys.modules if n.split(".")[0] == package]:
            del sys.modules[name]


# ---- in process ----------------------------------------------------------------------------------
def test_install_aliases_the_modules_scripts_import(clean_shim):
    assert shim.install() == ("mamba_ssm", "causal_conv1d")
    modules = {name: importlib.import_module(name) for name in shim.SHIMMED_MODULES}
    for name, module in modules.items():
        assert module is importlib.import_module(shim.SHIMMED_MODULES[name])
        assert module.__spec__.name == shim.SHIMMED_MODULES[name]  # the mambakit module keeps its own spec
    import mamba_ssm
    from causal_conv1d import causal_conv1d_fn
    from mamba_ssm.modules.mamba2 import Mamba2
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: F401
    from mamba_ssm.utils.generation import InferenceParams  # noqa: F401
    assert mamba_ssm.MambaLMHeadModel is mambakit.compat.MambaLMHeadModel and mamba_ssm.Mamba2 is Mamba2
    assert mamba_ssm.__version__ == mambakit.compat.__version__
    assert causal_conv1d_fn is mambakit.compat.causal_conv1d.causal_conv1d_fn
    with pytest.raises(ModuleNotFoundError, match="provides only") as refused:
        import mamba_ssm.ops.triton.layer_norm  # noqa: F401
    assert refused.value.name == "mamba_ssm.ops.triton.layer_norm"
    try:  # the fallback pattern of research code keeps working
        from mamba_ssm.ops.triton.layer_norm import RMSNorm
    except ImportError:
        RMSNorm = None
    assert RMSNorm is None
    shim.uninstall()
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mamba_ssm")


def test_a_real_mamba_ssm_is_never_shadowed_unless_forced(tmp_path, monkeypatch, clean_shim):
    (tmp_path / "mamba_ssm").mkdir()
    (tmp_path / "mamba_ssm" / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.warns(UserWarning, match="a real mamba_ssm is installed"):
        assert shim.install() == ("causal_conv1d",)
    assert importlib.import_module("mamba_ssm").REAL
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert shim.install(force=True) == ("mamba_ssm", "causal_conv1d")
    assert importlib.import_module("mamba_ssm") is mambakit.compat


def test_runner_runs_a_module_under_the_shim_and_refuses_a_missing_script(tmp_path, monkeypatch, capsys,
                                                                         clean_shim):
    (tmp_path / "probe.py").write_text("import sys, mamba_ssm\nprint(mamba_ssm.__name__, sys.argv[1:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    compat_main(["-m", "probe", "--flag", "x"])
    assert capsys.readouterr().out == "mambakit.compat ['--flag', 'x']\n"
    with pytest.raises(CompatError, match="no script at missing.py"):
        compat_main(["missing.py"])


# ---- subprocesses (started together, they run while the other tests do) --------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The seed script and lm-eval, each as ``python -m mambakit.compat …``; yields their Popen handles."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    shared_data = SHARED_DATA
    root = tmp_path_factory.mktemp("compat_runs")
    checkpoint = save_neox_checkpoint(hf_neox_sized_model(), root / "checkpoint")
    tokenizer = shared_data / "tokenizers" / "gpt-neox-20b"
    (root / "seed.py").write_text(SEED_SCRIPT)
    for name, kind in TASKS.items():
        metric = "acc" if "loglikelihood" in kind else "exact_match"
        body = TASK_COMMON.format(data=shared_data / "eval" / "lambada_openai_test.jsonl", metric=metric)
        (root / f"{name}.yaml").write_text(f"task: {name}\n{kind}{body}")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(root / "hf")}
    runner = [sys.executable, "-m", "mambakit.compat"]
    started = {
        "seed": subprocess.Popen([*runner, str(root / "seed.py"), str(checkpoint), str(tokenizer)], env=env,
                                 cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        "lm_eval": subprocess.Popen(
            [*runner, "-m", "lm_eval", "--model", "mamba_ssm", "--model_args",
             f"pretrained={checkpoint},tokenizer={tokenizer},dtype=float32", "--device", "cpu",
             "--tasks", ",".join(TASKS), "--include_path", str(root), "--limit", "3", "--batch_size", "1",
             "--output_path", str(root / "results"), "--log_samples"],
            env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    }
    yield dict(started=started, root=root, checkpoint=checkpoint, tokenizer=tokenizer)
    for process in started.values():
        process.kill()


def finished(runs, name: str) -> str:
    output, _ = runs["started"][name].communicate(timeout=300)
    assert runs["started"][name].returncode == 0, output[-3000:]
    return output


def test_seed_tutorial_script_runs_unchanged(runs):
    output = finished(runs, "seed")
    text, result = output.rstrip("\n").rsplit("\n", 1)
    assert result == "RESULT (1, 70) mambakit.compat.models.mixer_seq_simple"
    assert text.split("\n")[-1].startswith("Mamba is a new architecture that") or "Mamba is a new architecture that" in text
    assert len(text) > len("Mamba is a new architecture that") + 20


def test_lm_eval_mamba_ssm_model_runs_under_the_shim(runs):
    from transformers import AutoTokenizer

    from mambakit.compat import MambaLMHeadModel

    output = finished(runs, "lm_eval")
    assert "compat_lambada" in output and "compat_continue" in output
    samples = {task: [json.loads(line) for path in (runs["root"] / "results").rglob(f"samples_{task}_*.jsonl")
                      for line in path.read_text().splitlines()] for task in TASKS}
    assert [len(rows) for rows in samples.values()] == [3, 3]
    model = MambaLMHeadModel.from_pretrained(runs["checkpoint"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(runs["tokenizer"])
    for row in samples["compat_lambada"]:  # lm-eval's log-likelihood == the model's, computed here
        context, continuation = row["arguments"]["gen_args_0"]["arg_0"], row["arguments"]["gen_args_0"]["arg_1"]
        whole, context_ids = tokenizer.encode(context + continuation), tokenizer.encode(context)
        with torch.no_grad():
            logprobs = model(torch.tensor([whole[:-1]])).logits[0].log_softmax(-1)
        expected = sum(logprobs[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole)))
        assert abs(float(row["resps"][0][0][0]) - expected) < 1e-3
    for row in samples["compat_continue"]:  # lm-eval's generation == greedy generate, cut at the stop string
        context_ids = torch.tensor([tokenizer.encode(row["arguments"]["gen_args_0"]["arg_0"])])
        generated = model.generate(context_ids, max_length=context_ids.shape[1] + 5)[0, context_ids.shape[1]:]
        assert row["resps"][0][0] == tokenizer.decode(generated.tolist()).split("\n\n")[0]
