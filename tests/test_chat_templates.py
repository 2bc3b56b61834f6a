"""Chat templates render the documented text exactly and stop replies where they should."""
import pytest

from mambakit.chat.templates import BUILTIN, ChatTemplateError, get_template
from mambakit.chat.urial_prompt import URIAL_PREAMBLE
from mambakit.generation.row_text import RowText
from mambakit.tokenizer import byte_tokenizer

TOKENIZER = byte_tokenizer()
TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "Capital of France?"}]

GOLDEN = {
    "plain": "A conversation between a user and a smart AI assistant.\n\n"
             "### User: Hi\n### Assistant: Hello!\n### User: Capital of France?\n### Assistant:",
    "urial": URIAL_PREAMBLE
             + "\n\n# Query:\n```\nHi\n```\n\n\n# Answer:\n```\nHello!\n```\n"
             + "\n\n# Query:\n```\nCapital of France?\n```\n\n\n# Answer:\n```\n",
    "chatml": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
              "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n",
    "zephyr": "<|user|>\nHi<|endoftext|>\n<|assistant|>\nHello!<|endoftext|>\n"
              "<|user|>\nCapital of France?<|endoftext|>\n<|assistant|>\n",
}

# What a model might write after the generation prompt, and the reply the conversation keeps.
GENERATED = {
    "plain": (" Paris.\n### User: and Spain?", "Paris."),
    "urial": ("Paris is the capital.\n```\n\n# Query:\n```\nmore", "Paris is the capital."),
    "chatml": ("Paris.<|im_end|>\n<|im_start|>user\n", "Paris."),
    "zephyr": ("Paris.\n<|user|>\nThanks", "Paris."),
}


@pytest.mark.parametrize("name", list(BUILTIN))
def test_renders_golden_text(name):
    template = BUILTIN[name]
    conversation = template.conversation(TURNS)
    assert template.render(conversation, TOKENIZER, add_generation_prompt=True) == GOLDEN[name]
    segments = template.segments(conversation, TOKENIZER, add_generation_prompt=True)
    assert "".join(segments) == GOLDEN[name]
    assert len(segments) == len(conversation)
    assert segments[-2].lstrip().startswith("Hello!")  # a reply's segment holds the reply and its closing


def test_urial_preamble_is_the_papers_prompt():
    assert URIAL_PREAMBLE.startswith("# Instruction\n\nBelow is a list of conversations between a human and an AI "
                                     "assistant (you). \nUsers place their queries under \"# Query:\"")
    assert URIAL_PREAMBLE.count("# Query:\n```\n") == 3 and URIAL_PREAMBLE.count("# Answer:\n```\n") == 3
    assert URIAL_PREAMBLE.endswith("guidelines for your specific fryer model.\n\n```") and len(URIAL_PREAMBLE) == 5527


def test_system_message_replaces_the_default():
    plain = BUILTIN["plain"]
    text = plain.render(plain.conversation(TURNS[:1], "Be brief."), TOKENIZER, add_generation_prompt=True)
    assert text == "Be brief.\n\n### User: Hi\n### Assistant:"
    chatml = BUILTIN["chatml"]
    assert chatml.render(chatml.conversation(TURNS[:1], "Be brief."), TOKENIZER) == \
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    assert chatml.conversation(TURNS[:1]) == TURNS[:1]  # no default system message


@pytest.mark.parametrize("name", list(BUILTIN))
def test_stops_where_the_turn_ends(name):
    template = BUILTIN[name]
    generated, expected = GENERATED[name]
    row = RowText(TOKENIZER, list(template.stop), TOKENIZER.eos_token_id)
    shown = "".join(row.add(token) for token in TOKENIZER.encode(generated) if row.finish_reason is None)
    assert row.finish_reason == "stop"
    assert template.clean_reply(row.text) == expected
    assert shown == row.text  # nothing past the stop string was streamed


def test_zephyr_stops_at_end_of_text_token():
    row = RowText(TOKENIZER, list(BUILTIN["zephyr"].stop), TOKENIZER.eos_token_id)
    for token in TOKENIZER.encode("Paris.") + [TOKENIZER.eos_token_id]:
        row.add(token)
    assert row.finish_reason == "stop" and row.text == "Paris."


def test_tokenizer_template_is_the_default_when_present():
    source = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}" \
             "{% if add_generation_prompt %}[assistant] {% endif %}"
    template = get_template(None, source)
    assert template.name == "tokenizer" and template.stop == ()
    assert template.render(TURNS, TOKENIZER, add_generation_prompt=True) == \
        "[user] Hi\n[assistant] Hello!\n[user] Capital of France?\n[assistant] "
    assert get_template(None, None).name == "plain"
    assert get_template("chatml", source).name == "chatml"
    assert get_template(None, "{{ '<|im_start|>' }}x<|im_end|>").stop == ("<|im_end|>",)


def test_template_from_file(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }}|{% endfor %}")
    assert get_template(str(path)).render(TURNS, TOKENIZER) == "Hi|Hello!|Capital of France?|"


def test_errors_name_the_problem():
    with pytest.raises(ChatTemplateError, match="unknown chat template 'nope'"):
        get_template("nope")
    with pytest.raises(ChatTemplateError, match="has no chat_template"):
        get_template("tokenizer", None)
    with pytest.raises(ChatTemplateError, match=r"messages\[0\] must be"):
        BUILTIN["plain"].render([{"role": "robot", "content": "x"}], TOKENIZER)
    last_only = get_template(None, "{{ messages[-1]['content'] }}")
    with pytest.raises(ChatTemplateError, match="not prefix-stable"):
        last_only.segments(TURNS, TOKENIZER)
