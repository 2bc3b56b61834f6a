"""Training data: formats, the malformed-row report, chat rendering and the assistant-only loss mask."""
import json

import pytest

from mambakit.tokenizer import byte_tokenizer, load_tokenizer
from mambakit.train.data import Completion, Conversation, DataReport, Document, detect_format, to_examples
from mambakit.train.rendering import IGNORE_INDEX, ExampleEncoder, resolve_template
from mambakit.train.sources import DataError, hold_out, read_source

EOT = "<|endoftext|>"


def _encoder(tokenizer, max_length=100_000, train_on="assistant", template="chatml"):
    return ExampleEncoder(tokenizer, resolve_template(template, tokenizer), max_length, train_on)


def _target_runs(encoded, tokenizer) -> list[str]:
    """The text of each maximal run of target tokens."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def test_formats_are_detected():
    assert detect_format([{"text": "<|im_start|>user\nhi<|im_end|>\n"}]) == "chatml"
    assert detect_format([{"text": "plain prose"}]) == "text"
    assert detect_format(["a whole file"]) == "text"
    assert detect_format([{"messages": []}]) == "messages"
    assert detect_format([{"instruction": "a", "input": "", "output": "b"}]) == "alpaca"
    assert detect_format([{"prompt": "a", "completion": "b"}]) == "prompt_completion"
    with pytest.raises(DataError, match="cannot tell the data format"):
        detect_format([{"question": "?"}])


def test_malformed_rows_are_counted_shown_and_skipped(tmp_path):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    lines = [json.dumps(good), "{not json", json.dumps({"messages": "oops"}),
             json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
             json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}),
             json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}),
             json.dumps(good)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = DataReport()
    examples = to_examples(read_source(str(path)).train, "auto", report, EOT)
    assert [e.row for e in examples] == [0, 6]
    assert (report.rows, report.used, report.skipped) == (7, 2, 5)
    assert report.reasons == {"not JSON": 1, "messages is not a non-empty list": 1, "no assistant turn": 1,
                              "unknown role 'wizard'": 1, "a message lacks a string 'content'": 1}
    assert [e["row"] for e in report.examples] == [1, 2, 3, 4, 5]
    assert report.examples[0]["row_start"].startswith("line 2: {not json")
    assert "5 skipped" in report.summary() and "row 3: no assistant turn" in report.summary()


def test_bad_chatml_text_is_reported():
    report = DataReport()
    rows = [{"text": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"},
            {"text": "stray words <|im_start|>user\nhi<|im_end|>\n"}, {"text": "<|im_start|>user\nunclosed"}]
    examples = to_examples(rows, "chatml", report, EOT)
    assert len(examples) == 1 and report.skipped == 2
    assert set(report.reasons) == {"text is not a sequence of <|im_start|>role\\n…<|im_end|> turns"}


def test_alpaca_prompt_completion_and_text_rows():
    examples = to_examples([{"instruction": "Add", "input": "1 and 2", "output": "3"}], "alpaca", DataReport(), EOT)
    assert examples[0].messages == [{"role": "user", "content": "Add\n\n1 and 2"}, {"role": "assistant", "content": "3"}]
    examples = to_examples([{"prompt": "Q: 1+1?\nA:", "completion": " 2"}], "auto", DataReport(), EOT)
    assert examples == [Completion("Q: 1+1?\nA:", " 2", row=0)]
    examples = to_examples([f"one story.\n{EOT}\nanother one.\n{EOT}\n"], "text", DataReport(), EOT)
    assert [e.text for e in examples] == ["one story.", "another one."]


def test_byte_level_masks_are_exactly_the_assistant_turns():
    tokenizer = byte_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello, ünïcode!"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Bye."}]
    encoded = _encoder(tokenizer).encode([Conversation(messages)], DataReport())[0]
    assert tokenizer.decode(encoded.input_ids) == "".join(
        f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert _target_runs(encoded, tokenizer) == ["Hello, ünïcode!<|im_end|>\n", "Bye.<|im_end|>\n"]


def test_gpt_neox_masks_on_real_oasst_conversations(shared_data):
    """Every assistant turn of the 200 real conversations, and nothing else, is a target (GPT-NeoX BPE)."""
    tokenizer = load_tokenizer(shared_data / "tokenizers" / "gpt-neox-20b")
    rows = read_source(str(shared_data / "chat" / "oasst1_en_200.chatml.jsonl")).train
    examples = to_examples(rows, "auto", DataReport(), EOT)
    encoded = _encoder(tokenizer).encode(examples, DataReport())
    assert len(encoded) == 200
    for example, row, piece in zip(examples, rows, encoded):
        assert tokenizer.decode(piece.input_ids) == row["text"]  # ChatML parsed and re-rendered exactly
        expected = [m["content"] + "<|im_end|>\n" for m in example.messages if m["role"] == "assistant"]
        assert _target_runs(piece, tokenizer) == expected


def test_messages_and_chatml_files_give_the_same_training_examples(shared_data):
    tokenizer = byte_tokenizer()
    encoder = _encoder(tokenizer, max_length=512)
    chat = shared_data / "chat"
    both = [encoder.encode(to_examples(read_source(str(chat / name)).train, "auto", DataReport(), EOT), DataReport())
            for name in ("oasst1_en_200.chatml.jsonl", "oasst1_en_200.messages.jsonl")]
    assert [(e.input_ids, e.labels) for e in both[0]] == [(e.input_ids, e.labels) for e in both[1]]


def test_truncation_train_on_all_and_document_chunks():
    tokenizer = byte_tokenizer()
    chat = Conversation([{"role": "user", "content": "x" * 30}, {"role": "assistant", "content": "y" * 30}])
    report = DataReport()
    assert _encoder(tokenizer, max_length=40).encode([chat], report) == []  # the reply starts past 40 tokens
    assert report.skipped == 1 and "no target tokens within max_length=40" in report.summary()
    everything = _encoder(tokenizer, max_length=40, train_on="all").encode([chat], DataReport())[0]
    assert len(everything.input_ids) == 40 and everything.labels == [IGNORE_INDEX] + everything.input_ids[1:]
    completion = _encoder(tokenizer).encode([Completion("2+2=", "4")], DataReport())[0]
    assert _target_runs(completion, tokenizer) == ["4" + EOT]
    pieces = _encoder(tokenizer, max_length=8).encode([Document("abcdefghijklmnopqrs")], DataReport())
    assert [tokenizer.decode(p.input_ids) for p in pieces] == ["abcdefgh", "ijklmnop", "qrs" + EOT]
    assert all(p.labels == [IGNORE_INDEX] + p.input_ids[1:] for p in pieces)


def test_hold_out_is_seeded_and_disjoint():
    rows = list(range(100))
    first, again = hold_out(rows, 0.1, seed=3), hold_out(rows, 0.1, seed=3)
    assert first == again and len(first.eval) == 10
    assert sorted(first.train + first.eval) == rows
    assert hold_out(rows, 0.0, seed=3).eval is None


def test_unknown_local_data_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="no data at"):
        read_source(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        read_source(str(tmp_path / "data.csv"))
