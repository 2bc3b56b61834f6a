"""RowText's incremental detokenization gives, after every token, exactly the text of decoding all ids at once."""
import json
import random

import pytest

from mambakit.generation import row_text
from mambakit.generation.row_text import RowText
from mambakit.loading import load
from mambakit.tokenizer import byte_tokenizer, load_tokenizer


def _check_every_step(tokenizer, ids, stop=()):
    row = RowText(tokenizer, list(stop), None)
    streamed = ""
    for count, token in enumerate(ids, start=1):
        streamed += row.add(token)
        if row.finish_reason:
            return row, streamed
        assert row.text == tokenizer.decode(ids[:count], skip_special_tokens=False)
    return row, streamed + row.flush()


@pytest.fixture
def neox(shared_data):
    return load_tokenizer(shared_data / "tokenizers" / "gpt-neox-20b")


def test_real_conversations_decode_incrementally_to_the_full_text(neox, shared_data):
    lines = (shared_data / "chat" / "oasst1_en_200.chatml.jsonl").read_text().splitlines()
    settled = 0
    for line in lines[:60]:
        ids = neox.encode(json.loads(line)["text"])[:600]
        row, streamed = _check_every_step(neox, ids)
        assert streamed == neox.decode(ids)
        settled += row._settled
    assert settled > 0.8 * 60 * 100  # the speed-up is real: most ids settle out of the tail


def test_split_characters_and_random_ids_stay_exact(neox):
    text = "Grüße aus Zürich 🐍🐍 — 日本語のテキスト, naïve café… ok"
    _check_every_step(neox, neox.encode(text) * 3)
    emoji = neox.encode("🐍")
    assert len(emoji) > 1  # a character over several tokens: some shift below puts a settle point inside it
    for shift in range(row_text.DECODE_WINDOW):
        _check_every_step(neox, neox.encode("a" * shift) + emoji * 40)
    rng = random.Random(0)  # random ids: broken UTF-8 byte sequences, odd merges
    _check_every_step(neox, [rng.randrange(len(neox)) for _ in range(400)])


def test_byte_tokenizer_multibyte_characters():
    tokenizer = byte_tokenizer()
    _check_every_step(tokenizer, tokenizer.encode("añb€c😀d" * 20, add_special_tokens=False))


def test_the_default_models_tokenizer():
    _, tokenizer, _ = load("mambakit:small", device="cpu")
    with open(__file__, encoding="utf-8") as source:
        _check_every_step(tokenizer, tokenizer.encode(source.read(), add_special_tokens=False)[:500])


def test_a_stop_string_spanning_the_settled_text_still_stops(neox):
    prefix = "word " * (3 * row_text.DECODE_WINDOW)
    ids = neox.encode(prefix + "the end ### User: more")
    row, streamed = _check_every_step(neox, ids, stop=["### User:"])
    assert row.finish_reason == "stop" and streamed == prefix + "the end "
