"""The stateful chat gives the tokens that re-encoding the whole conversation gives, turn after turn; saved
chats, prefix caches and chunked long documents resume exactly."""
import pytest
import torch

import mambakit
from mambakit.chat import BUILTIN, ChatSession, PrefixCache
from mambakit.chat.session import ChatSessionError
from mambakit.chat.summarize import feed_document, summarize
from mambakit.generation import Generator, SamplingParams
from mambakit.generation.row_text import RowText
from mambakit.tokenizer import byte_tokenizer
from tiny_models import hf_model, save_hf

GREEDY = SamplingParams(max_new_tokens=24, temperature=0)
QUESTIONS = ["Hello there!", "What is two plus two?", "And what about three?"]


def chat_checkpoint(folder):
    """A tiny HF-made Mamba-2 checkpoint with the byte tokenizer (its replies depend on the context)."""
    save_hf(hf_model("mamba2"), folder)
    byte_tokenizer().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    model, tokenizer, _ = mambakit.load(chat_checkpoint(tmp_path_factory.mktemp("chat-model")), device="cpu")
    return Generator(model, tokenizer)


def reencoded_reply(session: ChatSession) -> list[int]:
    """The reply tokens to the last user message when the whole conversation is encoded from a zero state."""
    generator, template = session.generator, session.template
    ids = []
    for segment in template.segments(session.messages[:-1], generator.tokenizer, add_generation_prompt=True):
        ids += generator.tokenizer.encode(segment, add_special_tokens=False)
    row = RowText(generator.tokenizer, list(session.params.stop) + list(template.stop),
                  generator.tokenizer.eos_token_id)
    reply = []
    for tokens in generator.decode([ids], session.params, context=None):
        reply.append(int(tokens[0]))
        row.add(reply[-1])
        if row.finish_reason:
            break
    return reply


@pytest.mark.parametrize("name,system,penalty", [("plain", None, 1.0), ("chatml", "Be brief.", 1.0),
                                                  ("zephyr", None, 1.3), ("urial", "Answer in the blocks.", 1.0)])
def test_stateful_turns_equal_reencoding(generator, name, system, penalty):
    params = GREEDY.updated(repetition_penalty=penalty)
    session = ChatSession(generator, BUILTIN[name], params, system=system)
    for question in QUESTIONS:
        session.reply(question)
        turn = session.last_turn
        assert turn.reply_tokens > 0 and turn.finish_reason in ("stop", "length")
        assert turn.reply_ids == reencoded_reply(session)
        # a turn costs its own tokens: the prompt fed is the new user segment only
        assert turn.prompt_tokens == len(generator.tokenizer.encode(
            BUILTIN[name].segments(session.messages, generator.tokenizer)[-2]))
    assert session.fed_ids == session.token_ids()
    _, fresh = generator.prefill([session.token_ids()])
    torch.testing.assert_close(session.state.ssm, fresh.ssm, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(session.state.conv, fresh.conv, rtol=1e-4, atol=1e-5)


def test_interrupted_reply_stays_in_the_conversation(generator):
    session = ChatSession(generator, BUILTIN["plain"], GREEDY.updated(max_new_tokens=200, ignore_eos=True))
    stream = session.respond("Tell me a long story")
    shown = next(stream) + next(stream)
    stream.close()
    assert session.last_turn.finish_reason == "interrupted"
    assert session.messages[-1] == {"role": "assistant", "content": BUILTIN["plain"].clean_reply(shown)}
    session.params = GREEDY
    session.reply("Shorter, please")
    assert session.last_turn.reply_ids == reencoded_reply(session)


def test_save_and_load_continue_the_same_conversation(generator, tmp_path):
    session = ChatSession(generator, BUILTIN["chatml"], GREEDY)
    session.reply(QUESTIONS[0])
    path = session.save(tmp_path / "chat.safetensors")
    expected = session.reply(QUESTIONS[1])

    restored = ChatSession(generator, BUILTIN["chatml"], GREEDY)
    restored.load(path)
    assert restored.messages == session.messages[:-2]
    assert restored.reply(QUESTIONS[1]) == expected

    with pytest.raises(ChatSessionError, match="template 'chatml'; restart with --template chatml"):
        ChatSession(generator, BUILTIN["plain"], GREEDY).load(path)
    other, tokenizer, _ = mambakit.load("mambakit:tiny-random", device="cpu")
    with pytest.raises(ChatSessionError, match="saved with another model"):
        ChatSession(Generator(other, tokenizer), BUILTIN["chatml"], GREEDY).load(path)
    session.state.save(tmp_path / "bare.safetensors")
    with pytest.raises(ChatSessionError, match="not a saved chat"):
        restored.load(tmp_path / "bare.safetensors")


def test_prefix_cache_reuse_equals_recomputing(generator, tmp_path):
    system = "You are a careful assistant. " * 8
    plain = ChatSession(generator, BUILTIN["plain"], GREEDY, system=system)
    expected = [plain.reply(question) for question in QUESTIONS[:2]]
    for run in range(2):
        cache = PrefixCache(tmp_path / "cache")
        session = ChatSession(generator, BUILTIN["plain"], GREEDY, system=system, prefix_cache=cache)
        assert (cache.hits, cache.misses) == ((1, 0) if run else (0, 1))
        assert [session.reply(question) for question in QUESTIONS[:2]] == expected
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_summarize_chunks_and_cached_document_give_the_same_answer(generator, shared_data, tmp_path):
    document = (shared_data / "text" / "tinystories_2MiB.txt").read_text()[:3000]
    answers = []
    for chunk, cache in ((4096, None), (256, None), (256, PrefixCache(tmp_path)), (4096, PrefixCache(tmp_path))):
        generator.prefill_chunk_size = chunk
        session = ChatSession(generator, BUILTIN["chatml"], GREEDY, prefix_cache=cache)
        report, pieces = summarize(session, document, "Who is in the story?")
        answers.append(("".join(pieces), session.last_turn.reply_ids))
        assert report.document_tokens == len(generator.tokenizer.encode(
            f"<|im_start|>user\n{document}<|im_end|>\n"))
        assert report.context_tokens == report.document_tokens and report.peak_memory_bytes > 0
    generator.prefill_chunk_size = 2048
    assert answers[1:] == answers[:1] * 3
    assert cache.hits == 1


def test_document_then_question_is_a_conversation_prefix(generator):
    session = ChatSession(generator, BUILTIN["plain"], GREEDY)
    feed_document(session, "A short document about cats.")
    session.reply("Summarize it.")
    assert session.messages[1]["content"] == "A short document about cats."
    assert session.last_turn.reply_ids == reencoded_reply(session)
    assert session.fed_ids == session.token_ids()
