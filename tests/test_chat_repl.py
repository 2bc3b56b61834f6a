"""``mambakit chat`` driven end to end through a pseudo-terminal: turns, slash commands, Ctrl-C, Ctrl-D."""
import re
import sys
import time

import pexpect
import pytest

from mambakit.chat.repl import parse_option
from mambakit.generation import SamplingParams
from mambakit.generation.sampling import SamplingError
from test_chat_session import chat_checkpoint

PROMPT = ">>> "
TURN_LINE = re.compile(r"\[(\d+) prompt \+ (\d+) reply tokens, prefill \d+ ms, [\d.\-]+ tok/s; (\d+) in the state")


def test_parse_option():
    params = SamplingParams()
    assert parse_option("temperature", "0", params).temperature == 0.0
    assert parse_option("top-k", "40", params).top_k == 40
    assert parse_option("stop", "###", params).stop == ["###"]
    assert parse_option("stop", '["a", "b"]', params).stop == ["a", "b"]
    assert parse_option("seed", "none", parse_option("seed", "7", params)).seed is None
    assert parse_option("ignore_eos", "true", params).ignore_eos is True
    with pytest.raises(SamplingError, match="top_p must be in"):
        parse_option("top_p", "2", params)


def test_repl_through_a_terminal(tmp_path):
    folder = chat_checkpoint(tmp_path / "model")
    child = pexpect.spawn(sys.executable, ["-m", "mambakit.cli", "chat", "--model", str(folder), "--device", "cpu",
                                           "--template", "plain", "--temperature", "0", "--max-new-tokens", "12"],
                          cwd=str(tmp_path), timeout=60, encoding="utf-8", codec_errors="replace",
                          dimensions=(40, 200))
    try:
        child.expect(r"system prompt (\d+) tokens")
        system_tokens = int(child.match.group(1))
        child.expect_exact(PROMPT)

        child.sendline("Hello there")
        child.expect(TURN_LINE)
        prompt_tokens, reply_tokens, in_state = map(int, child.match.groups())
        assert prompt_tokens == len("### User: Hello there\n### Assistant:") and reply_tokens > 0
        first_turn_state = in_state
        assert in_state > system_tokens + prompt_tokens
        child.expect_exact(PROMPT)

        child.sendline("How are you?")  # the second turn feeds only its own tokens
        child.expect(TURN_LINE)
        assert int(child.match.group(1)) == len("### User: How are you?\n### Assistant:")
        child.expect_exact(PROMPT)

        for command, answer in [("/set temperature 0.7", "[temperature = 0.7]"),
                                ("/set temperature 0", "[temperature = 0.0]"),
                                ("/set bogus 1", "error: unknown sampling option 'bogus'"),
                                ("/frobnicate", "error: unknown command /frobnicate"),
                                ("/help", "/save FILE"),
                                (f"/save {tmp_path / 'chat.safetensors'}", "[saved 5 messages"),
                                ("/reset", f"[conversation reset; system prompt {system_tokens} tokens]"),
                                (f"/load {tmp_path / 'chat.safetensors'}", "[loaded 5 messages"),
                                ("/load nowhere.safetensors", "error: no saved state at nowhere.safetensors"),
                                ("/system Be brief.", "[system message set"),
                                ("/system", "Be brief."),
                                ("/set max_new_tokens 100000", "[max_new_tokens = 100000]"),
                                ("/set ignore_eos true", "[ignore_eos = True]")]:
            child.sendline(command)
            child.expect_exact(answer)
            child.expect_exact(PROMPT)

        child.sendline("Tell me a very long story")
        time.sleep(2.0)  # let the reply run (100000 tokens would take minutes), then Ctrl-C it
        child.sendintr()
        child.expect(TURN_LINE)
        child.expect_exact(", interrupted]")
        child.expect_exact(PROMPT)

        child.sendline("/set max_new_tokens 12")
        child.expect_exact(PROMPT)
        child.sendline("Still there?")  # the session survived the interrupt
        child.expect(TURN_LINE)
        assert int(child.match.group(2)) == 12
        child.expect_exact(PROMPT)
        assert first_turn_state > 0

        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
