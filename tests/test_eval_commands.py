"""``mambakit eval`` (local tasks, the paper's table) and ``mambakit eval ppl``; local task data; paper numbers."""
import json

import pytest

pytest.importorskip("lm_eval")

from mambakit.cli import main  # noqa: E402
from mambakit.eval.paper import comparison_rows, known_checkpoint, markdown_table  # noqa: E402
from mambakit.eval.tasks import local_data, local_twin  # noqa: E402

TINY = ["--model", "mambakit:tiny-random", "--device", "cpu"]


def test_eval_runs_paper_tasks_offline_from_local_files_and_puts_the_paper_beside_them(shared_data, tmp_path, capsys):
    code = main(["eval", *TINY, "--tasks", "lambada_openai,piqa", "--data-dir", str(shared_data / "eval"),
                 "--limit", "3", "--bootstrap-iters", "0", "--compare-to", "state-spaces/mamba-1.4b",
                 "--output", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["tasks"] == ["mambakit_lambada_openai", "mambakit_piqa"]
    rows = {row["label"]: row for row in report["paper"]["rows"]}
    assert rows["LAMBADA ppl (lower is better)"]["published"] == 5.04
    assert rows["PIQA acc"]["published"] == 74.2
    assert rows["PIQA acc"]["measured"] == pytest.approx(100 * report["results"]["mambakit_piqa"]["acc,none"])
    assert rows["HellaSwag acc_norm"]["measured"] is None
    printed = capsys.readouterr().out
    assert "paper (state-spaces/mamba-1.4b)" in printed and "| PIQA acc |" in printed
    assert "paper (state-spaces/mamba-1.4b)" in (tmp_path / "results.md").read_text()


def test_eval_errors_are_one_line(shared_data, tmp_path, capsys):
    assert main(["eval", *TINY, "--tasks", "mambakit_piqa", "--output", str(tmp_path)]) == 2
    assert "pass --data-dir" in capsys.readouterr().err
    assert main(["eval", *TINY, "--tasks", "lambada_openai", "--data-dir", str(shared_data / "eval"),
                 "--compare-to", "my-own-model", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mambakit: error: --compare-to my-own-model") and err.count("\n") == 1


def test_eval_ppl_writes_perplexities_and_the_loss_plot(shared_data, tmp_path, capsys):
    text = shared_data / "text" / "tinyshakespeare.txt"
    code = main(["eval", "ppl", str(text), *TINY, "--max-tokens", "600", "--bin-size", "100",
                 "--output", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "perplexity.json").read_text())
    assert report["texts"][0]["tokens"] == 600 and len(report["loss_by_position"]) == 6
    assert (tmp_path / "loss_by_position.png").read_bytes().startswith(b"\x89PNG")
    assert "perplexity" in capsys.readouterr().out
    assert main(["eval", "ppl", str(tmp_path / "missing.txt"), *TINY]) == 2


def test_local_tasks_replace_lm_eval_tasks_only_when_their_files_are_there(shared_data, tmp_path):
    assert local_twin("piqa", shared_data / "eval") == "mambakit_piqa"
    assert local_twin("piqa", tmp_path) == "piqa"
    assert local_twin("hellaswag", shared_data / "eval") == "hellaswag"
    assert len(local_data.piqa(str(shared_data / "eval"))["validation"]) == 1838
    (tmp_path / "piqa_valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    (tmp_path / "piqa_valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(local_data.LocalDataError, match="one label"):
        local_data.piqa(str(tmp_path))
    (tmp_path / "lambada_openai_test.jsonl").write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    with pytest.raises(local_data.LocalDataError, match="lambada_openai_test.jsonl:2 lacks"):
        local_data.lambada_openai(str(tmp_path))
    with pytest.raises(local_data.LocalDataError, match="--data-dir"):
        local_data.lambada_openai(None)


def test_paper_table_knows_the_published_checkpoints():
    assert known_checkpoint("state-spaces/mamba-1.4b") == "state-spaces/mamba-1.4b"
    assert known_checkpoint("state-spaces/mamba-1.4b-hf") == "state-spaces/mamba-1.4b"
    assert known_checkpoint("/models/mamba-2.8b/") == "state-spaces/mamba-2.8b"
    assert known_checkpoint("./my-finetune") is None
    results = {"lambada_openai": {"perplexity,none": 5.5, "acc,none": 0.6}, "mambakit_piqa": {"acc,none": 0.75}}
    rows = comparison_rows(results, "state-spaces/mamba-1.4b")
    assert [(row["label"], row["measured"], row["published"]) for row in rows[:4]] == [
        ("LAMBADA ppl (lower is better)", 5.5, 5.04), ("LAMBADA acc", 60.0, 64.9),
        ("HellaSwag acc_norm", None, 59.1), ("PIQA acc", 75.0, 74.2)]
    table = markdown_table(rows, "state-spaces/mamba-1.4b")
    assert "| PIQA acc | 75.00 | 74.20 | +0.80 |" in table
    assert "OpenBookQA" not in table  # neither measured nor published
    assert markdown_table(comparison_rows(results, None), None).splitlines()[0] == "| metric | measured |"
