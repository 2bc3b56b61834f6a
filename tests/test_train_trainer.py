"""Training through the HF Trainer on CPU with tiny models: the loss falls, checkpoints round-trip, a killed
run resumes on the same loss curve, pretraining from a config works, and the CLI reports errors in one line."""
import json

import pytest
import torch
from safetensors import safe_open
from transformers import TrainerCallback

import mambakit
from mambakit.cli import main
from mambakit.config import MambaConfig
from mambakit.model import MambaLM
from mambakit.tokenizer import byte_tokenizer
from mambakit.train.packing import PackedCollator, packed_rows
from mambakit.train.recipes import load_recipe, shipped_recipes
from mambakit.train.rendering import Encoded
from mambakit.train.run import finetune, pretrain
from mambakit.train.trainer import MambaTrainer, training_arguments

QUIET = {"training.report_to": "none", "training.disable_tqdm": True, "training.use_cpu": True}


def _losses(log_history, key="loss"):
    return [(entry["step"], entry[key]) for entry in log_history if key in entry]


def test_finetune_on_oasst_lowers_held_out_loss_and_reports_bad_rows(shared_data, tmp_path):
    rows = (shared_data / "chat" / "oasst1_en_200.messages.jsonl").read_text().splitlines()
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(rows[:180] + ["{broken", json.dumps({"messages": [{"role": "user", "content": "?"}]})]))
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("\n".join(rows[180:]))
    recipe = load_recipe(None, {**QUIET, "model": "mambakit:tiny-random", "data": str(data),
                                "eval_data": str(held_out), "max_length": 128, "training.learning_rate": 5e-3,
                                "training.max_steps": 16, "training.per_device_train_batch_size": 8,
                                "training.per_device_eval_batch_size": 16, "training.warmup_steps": 2,
                                "training.eval_on_start": True, "training.eval_steps": 16, "training.save_steps": 16,
                                "training.logging_steps": 4})
    out = tmp_path / "out"
    report = finetune(recipe, out)
    history = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())["log_history"]
    (_, before), (_, after) = _losses(history, "eval_loss")
    assert before - after > 0.5, (before, after)
    assert report["eval_loss"] == pytest.approx(after, rel=1e-6)
    data_report = json.loads((out / "data_report.json").read_text())["train"]
    assert data_report["rows"] == 182 and data_report["reasons"]["not JSON"] == 1
    assert data_report["reasons"]["no assistant turn"] == 1
    assert {e["row"] for e in data_report["first_skipped"]} >= {180, 181}
    assert (out / "loss_curve.png").stat().st_size > 1000
    model, tokenizer, template = mambakit.load(out, device="cpu")
    assert "<|im_start|>" in template  # the ChatML it was trained with travels with the model


@pytest.mark.parametrize("tied", [True, False])
def test_saved_model_loads_with_identical_logits(tied, tmp_path):
    """Tied and untied heads; the untied run also recomputes each block in the backward pass."""
    config = MambaConfig(d_model=32, n_layer=2, vocab_size=257, d_state=8, tie_embeddings=tied)
    examples = [Encoded(list(range(1, 20 + i)), [-100] + list(range(2, 20 + i))) for i in range(8)]
    args = training_arguments(tmp_path / "run", {"max_steps": 2, "per_device_train_batch_size": 2,
                                                 "learning_rate": 1e-2, "report_to": "none", "use_cpu": True,
                                                 "disable_tqdm": True, "save_strategy": "no"}, has_eval=False)
    trainer = MambaTrainer(model=MambaLM.from_config(config, seed=0), args=args,
                           train_dataset=packed_rows(examples, 40), data_collator=PackedCollator(0),
                           tokenizer=byte_tokenizer(), gradient_checkpointing=not tied)
    assert trainer.model.gradient_checkpointing == (not tied)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    loaded, _, _ = mambakit.load(tmp_path / "saved", device="cpu", dtype="float32")
    assert (loaded.lm_head.weight is loaded.backbone.embedding.weight) == tied
    ids = torch.randint(1, 257, (2, 16))
    trained = trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, trained(ids).logits)


class _Kill(TrainerCallback):
    """Dies like a killed process right after optimizer step ``at`` (its checkpoint not written)."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt


def test_killed_run_resumes_on_the_same_loss_curve(shared_data, tmp_path):
    overrides = {**QUIET, "model": "mambakit:tiny-random", "max_length": 32, "eval_fraction": 0,
                 "data": str(shared_data / "chat" / "oasst1_en_200.chatml.jsonl"), "train_on": "all",
                 "training.max_steps": 6, "training.per_device_train_batch_size": 2,
                 "training.learning_rate": 3e-3, "training.logging_steps": 1, "training.save_steps": 3}
    finetune(load_recipe(None, overrides), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        finetune(load_recipe(None, overrides), tmp_path / "killed", callbacks=(_Kill(4),))
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-3"]
    finetune(load_recipe(None, overrides), tmp_path / "killed", resume=True)

    def curve(folder):
        return _losses(json.loads((folder / "checkpoint-6" / "trainer_state.json").read_text())["log_history"])

    whole, resumed = curve(tmp_path / "whole"), curve(tmp_path / "killed")
    assert [step for step, _ in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed == pytest.approx(whole, rel=1e-6)


def test_pretrain_from_a_config_lowers_the_loss_and_generates(shared_data, tmp_path):
    text = (shared_data / "text" / "tinystories_2MiB.txt").read_text()[:40_000]
    (tmp_path / "stories.txt").write_text(text)
    recipe = load_recipe("pretrain-small", {
        **QUIET, "data": str(tmp_path / "stories.txt"), "tokenizer": "bpe-320", "max_length": 48,
        "model_config": {"d_model": 32, "n_layer": 2, "d_state": 8}, "save_dtype": "bfloat16",
        "training.max_steps": 20, "training.per_device_train_batch_size": 16, "training.learning_rate": 1e-2,
        "training.per_device_eval_batch_size": 32, "training.warmup_steps": 2, "training.eval_steps": 20,
        "training.save_steps": 20, "training.logging_steps": 4})
    report = pretrain(recipe, tmp_path / "small")
    losses = [loss for _, loss in _losses(json.loads(
        (tmp_path / "small" / "checkpoint-20" / "trainer_state.json").read_text())["log_history"])]
    assert losses[-1] < losses[0] - 1.0, losses
    assert report["eval_loss"] < losses[0] - 1.0
    with safe_open(str(tmp_path / "small" / "model.safetensors"), "pt") as stored:  # save_dtype bfloat16
        assert stored.get_slice("backbone.embeddings.weight").get_dtype() == "BF16"
        assert stored.get_slice("backbone.layers.0.mixer.A_log").get_dtype() == "F32"
    model, tokenizer, _ = mambakit.load(tmp_path / "small", device="cpu")
    assert len(tokenizer) == 320 and model.config.vocab_size == 320
    assert model.backbone.embedding.weight.dtype == torch.float32  # loaded for CPU from bf16 storage
    assert model.backbone.layers[0].mixer.A_log.dtype == torch.float32
    assert report["sample"]["prompt"] == "Once upon a time" and report["sample"]["completion"]


def test_shipped_recipes_load():
    assert {"oasst-full", "oasst-lora", "pretrain-small"} <= set(shipped_recipes())
    for name in shipped_recipes():
        recipe = load_recipe(name)
        assert recipe.training_arguments()["learning_rate"] > 0
    assert load_recipe("oasst-full").training["learning_rate"] == 5e-5


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("some text")
    assert main(["finetune", "-m", "mambakit:tiny-random", "-o", str(tmp_path / "o"),
                 "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["finetune", "--recipe", "no-such-recipe", "-o", str(tmp_path / "o")]) == 2
    assert main(["finetune", "-m", "mambakit:tiny-random", "-o", str(tmp_path / "o"), "--set", "bogus=1"]) == 2
    assert main(["pretrain", "-o", str(tmp_path / "p"), "--resume", "--data", str(tmp_path / "t.txt")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("mambakit: error: ") for line in errors)
    assert "no data at" in errors[0] and "no recipe 'no-such-recipe'" in errors[1]
    assert "unknown recipe key 'bogus'" in errors[2] and "--resume" in errors[3]
