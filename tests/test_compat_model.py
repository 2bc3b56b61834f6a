"""MambaLMHeadModel from mambakit.compat: loading (both layouts, mamba_ssm's manual path), forward, and
generate with mamba_ssm's semantics; greedy equals mambakit's Generator and HF transformers' generate."""
import json
from pathlib import Path

import pytest
import torch
import transformers

from mambakit.compat import MambaLMHeadModel
from mambakit.compat.errors import CompatError
from mambakit.compat.models.config_mamba import MambaConfig
from mambakit.compat.utils.generation import InferenceParams, decode, sample
from mambakit.compat.utils.hf import load_config_hf, load_state_dict_hf
from mambakit.config import ConfigError
from mambakit.generation import Generator, SamplingError, SamplingParams
from mambakit.loading import load
from tiny_models import save_hf, save_state_spaces

PADDED_VOCAB = 50280  # GPT-NeoX's 50277 tokens padded to a multiple of 8, as the state-spaces models
PAD_IDS = [50277, 50278, 50279]


def hf_neox_sized_model(seed: int = 0):
    """A tiny random HF Mamba with the state-spaces vocabulary; untied head and perturbed D / norms so that
    greedy decoding wanders instead of repeating one token."""
    torch.manual_seed(seed)
    config = transformers.MambaConfig(vocab_size=PADDED_VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2,
                                      expand=2, conv_kernel=4, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                                      tie_word_embeddings=False)
    model = transformers.MambaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("D", "norm.weight", "norm_f.weight")):
                param.add_(0.3 * torch.randn_like(param))
    return model


def save_neox_checkpoint(model, folder: Path) -> Path:
    """mamba_ssm's layout with its real vocab_size (50277; the embedding has 50280 rows)."""
    save_state_spaces(model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 50277}))
    return folder


@pytest.fixture(scope="module")
def hf_model():
    return hf_neox_sized_model()


@pytest.fixture(scope="module")
def checkpoint(hf_model, tmp_path_factory):
    return save_neox_checkpoint(hf_model, tmp_path_factory.mktemp("neox") / "state-spaces")


@pytest.fixture(scope="module")
def model(checkpoint):
    return MambaLMHeadModel.from_pretrained(checkpoint, device="cpu", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompt():
    return torch.tensor([[44, 31, 2000, 17, 900, 4512], [7, 8, 9, 10, 11, 12]])


# ---- loading, forward, config --------------------------------------------------------------------
def test_from_pretrained_reads_both_layouts_and_matches_hf(model, hf_model, tmp_path, prompt):
    with torch.no_grad():
        expected = hf_model(prompt).logits
        torch.testing.assert_close(model(prompt).logits, expected, rtol=1e-4, atol=1e-4)
        hf_layout = MambaLMHeadModel.from_pretrained(save_hf(hf_model, tmp_path / "hf"))
        torch.testing.assert_close(hf_layout(prompt).logits, expected, rtol=1e-4, atol=1e-4)
        last = model(prompt, num_last_tokens=2)
    assert type(last).__name__ == "CausalLMOutput" and last._fields == ("logits",)
    torch.testing.assert_close(last.logits, expected[:, -2:], rtol=1e-4, atol=1e-4)
    assert MambaLMHeadModel.from_pretrained(tmp_path / "hf").training  # a fresh nn.Module, as mamba_ssm's
    assert model.config.vocab_size == 50277 and model.config.d_model == 32 and model.config.fused_add_norm
    assert model.config.ssm_cfg["layer"] == "Mamba1" and model.config.d_intermediate == 0


def test_mamba_ssm_manual_loading_path_and_save_pretrained(model, checkpoint, tmp_path, prompt):
    """MambaLMHeadModel(MambaConfig(**load_config_hf(d))) + load_state_dict(load_state_dict_hf(d)), as scripts do."""
    config = MambaConfig(**load_config_hf(str(checkpoint)))
    assert config.vocab_size == 50277 and config.tie_embeddings is False
    manual = MambaLMHeadModel(config, device="cpu", dtype=torch.float32)
    manual.load_state_dict(load_state_dict_hf(str(checkpoint), dtype=torch.float32))
    with torch.no_grad():
        torch.testing.assert_close(manual(prompt).logits, model(prompt).logits)
        model.save_pretrained(tmp_path / "saved")
        assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.json", "pytorch_model.bin"]
        assert json.loads((tmp_path / "saved" / "config.json").read_text())["ssm_cfg"]["layer"] == "Mamba1"
        reloaded = MambaLMHeadModel.from_pretrained(tmp_path / "saved")
        torch.testing.assert_close(reloaded(prompt).logits, model(prompt).logits)


def test_random_init_and_mamba2_config():
    config = MambaConfig(d_model=32, n_layer=2, vocab_size=100, ssm_cfg=dict(layer="Mamba2", d_state=16, headdim=8,
                                                                             chunk_size=8, A_init_range=(2, 3)))
    torch.manual_seed(0)
    lm = MambaLMHeadModel(config, initializer_cfg={"initializer_range": 0.05}, dtype=torch.bfloat16)
    assert lm.lm_head.weight is lm.backbone.embedding.weight and lm.lm_head.weight.shape == (104, 32)
    assert lm.backbone.embedding.weight.dtype == torch.bfloat16 and lm.backbone.layers[0].mixer.A_log.dtype == torch.float32
    assert bool((lm.backbone.layers[0].mixer.A_log.exp() >= 2).all() and (lm.backbone.layers[0].mixer.A_log.exp() <= 3).all())
    assert abs(lm.backbone.embedding.weight.float().std().item() - 0.05) < 0.01
    with pytest.raises(ConfigError, match="attn_layer_idx"):
        MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, vocab_size=100, attn_layer_idx=[1]))


# ---- generate: greedy equals mambakit and HF -----------------------------------------------------
def test_greedy_generate_equals_mambakit_and_hf(model, hf_model, checkpoint, prompt, shared_data):
    new_tokens = 24
    ours = model.generate(prompt, max_length=prompt.shape[1] + new_tokens)
    assert ours.shape == (2, prompt.shape[1] + new_tokens) and torch.equal(ours[:, :6], prompt)
    assert len(set(ours[0, 6:].tolist())) > 5  # the test model does not just repeat one token
    core_model, tokenizer, _ = load(checkpoint, device="cpu", tokenizer=shared_data / "tokenizers" / "gpt-neox-20b")
    generator = Generator(core_model, tokenizer)
    steps = generator.decode(prompt.tolist(), SamplingParams(max_new_tokens=new_tokens, temperature=0))
    assert torch.equal(torch.stack(list(steps), dim=1), ours[:, 6:])
    on_compat_model = Generator(model, tokenizer).decode(prompt.tolist(), SamplingParams(max_new_tokens=new_tokens,
                                                                                          temperature=0))
    assert torch.equal(torch.stack(list(on_compat_model), dim=1), ours[:, 6:])  # mambakit's tools take it as is
    hf = hf_model.generate(prompt, do_sample=False, max_length=prompt.shape[1] + new_tokens, pad_token_id=0,
                           suppress_tokens=PAD_IDS)
    assert torch.equal(hf, ours)
    assert torch.equal(model.generate(prompt, max_length=30, cg=True, temperature=0.5), ours[:, :30])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_forward_with_inference_params_is_a_decode_loop(model, checkpoint, prompt, device):
    """The loop mamba_ssm users write themselves: prefill at seqlen_offset 0, then one token per call."""
    if device != "cpu":
        model, prompt = MambaLMHeadModel.from_pretrained(checkpoint, device=device).eval(), prompt.to(device)
    expected = model.generate(prompt, max_length=16)
    params = InferenceParams(max_seqlen=16, max_batch_size=2)
    tokens, generated = prompt, []
    with torch.no_grad():
        while params.seqlen_offset + tokens.shape[1] < 16 or not generated:
            logits = model(tokens, inference_params=params, num_last_tokens=1).logits
            params.seqlen_offset += tokens.shape[1]
            tokens = logits[:, -1, :50277].argmax(-1, keepdim=True)
            generated.append(tokens)
    assert torch.equal(torch.cat([prompt, *generated], 1), expected)
    assert set(params.key_value_memory_dict) == {0, 1}
    assert params.key_value_memory_dict[0][0].shape == (2, 64, 4)  # mamba_ssm's conv_state (b, d, d_conv)


# ---- generate: mamba_ssm's semantics -------------------------------------------------------------
def test_max_length_counts_the_prompt_and_scores_are_the_step_logits(model, prompt):
    out = model.generate(prompt, max_length=10, return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape == (2, 10) and len(out.scores) == 4
    with torch.no_grad():
        for index, scores in enumerate(out.scores):
            assert scores.shape == (2, PADDED_VOCAB)
            torch.testing.assert_close(scores, model(out.sequences[:, :6 + index]).logits[:, -1], rtol=1e-4, atol=1e-4)
    assert model.generate(prompt, max_length=10, return_dict_in_generate=True).scores is None
    assert model.generate(prompt, max_length=3).shape == (2, 7)  # a prompt longer than max_length: one token
    assert model.generate(prompt, max_length=10, vocab_size=1000, return_dict_in_generate=True,
                          output_scores=True).scores[0].shape == (2, 1000)


def test_eos_teacher_outputs_and_streamer(model, prompt):
    free = model.generate(prompt, max_length=14)
    teacher = free.clone()
    teacher[:, 9] = 3
    forced = model.generate(prompt, max_length=14, teacher_outputs=teacher[:, :10])
    assert torch.equal(forced[:, :10], teacher[:, :10]) and forced.shape == (2, 14)
    stopped = model.generate(prompt, max_length=14, teacher_outputs=teacher[:, :10], eos_token_id=3)
    assert torch.equal(stopped, teacher[:, :10])  # every row produced eos at position 9: stop there
    teacher[0, 9] = 4
    assert model.generate(prompt, max_length=14, teacher_outputs=teacher[:, :10], eos_token_id=3).shape == (2, 14)

    class Recorder:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value)

        def end(self):
            self.ended = True

    streamer = Recorder()
    out = model.generate(prompt[:1], max_length=9, streamer=streamer)
    assert streamer.ended and torch.equal(streamer.puts[0], prompt[:1])
    assert [p.shape for p in streamer.puts[1:]] == [(1, 1)] * 3 and torch.equal(torch.cat(streamer.puts, 1), out)


def test_repetition_penalty_is_ctrl_over_prompt_and_output(model, prompt):
    out = model.generate(prompt, max_length=20, repetition_penalty=1.3, return_dict_in_generate=True,
                         output_scores=True)
    for index, scores in enumerate(out.scores):
        seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, out.sequences[:, :6 + index], True)
        penalised = torch.where(seen, torch.where(scores < 0, scores * 1.3, scores / 1.3), scores)
        assert torch.equal(penalised[:, :50277].argmax(-1), out.sequences[:, 6 + index])


def test_sampling_options(model, prompt):
    greedy = model.generate(prompt, max_length=16)
    assert torch.equal(model.generate(prompt, max_length=16, temperature=3.0, top_p=0.5), greedy)  # top_k=1
    assert torch.equal(model.generate(prompt, max_length=16, top_k=0, temperature=0), greedy)
    torch.manual_seed(7)
    first = model.generate(prompt, max_length=16, top_k=0, return_dict_in_generate=True, output_scores=True)
    torch.manual_seed(7)
    assert torch.equal(model.generate(prompt, max_length=16, top_k=0), first.sequences)  # reproducible
    assert not torch.equal(first.sequences, greedy)
    top = model.generate(prompt, max_length=16, top_k=5, temperature=2.0, return_dict_in_generate=True,
                         output_scores=True)
    for index, scores in enumerate(top.scores):
        allowed = scores.topk(5, dim=-1).indices
        assert bool((allowed == top.sequences[:, 6 + index, None]).any(-1).all())
    assert torch.equal(model.generate(prompt, max_length=16, top_k=40, top_p=1e-6), greedy)
    with pytest.raises(SamplingError, match="top_p"):
        model.generate(prompt, max_length=16, top_k=0, top_p=1.5)


def test_min_p_is_real_min_p_the_mamba_ssm_bug_fixed():
    """Token 0's logit is low: mamba_ssm would keep every logit above 0.5 × logit[0] = -5 (tokens 1, 2 and 3);
    real min-p keeps the tokens with probability >= 0.5 × the top one (tokens 1 and 2), for each row."""
    logits = torch.full((400, 50), -20.0)  # 400 rows: 400 independent draws (mamba_ssm's min_p needs 1 row)
    logits[:, :4] = torch.tensor([-10.0, 5.0, 4.9, 4.0])
    torch.manual_seed(0)
    assert set(sample(logits, top_k=0, min_p=0.5).tolist()) == {1, 2}
    assert set(sample(logits, top_k=0).tolist()) >= {1, 2, 3}


def test_decode_needs_a_mambakit_model(prompt):
    with pytest.raises(CompatError, match="mambakit model"):
        decode(prompt, torch.nn.Linear(2, 2), max_length=10)


def test_enable_timing_prints(model, prompt, capsys):
    model.generate(prompt, max_length=8, enable_timing=True)
    assert capsys.readouterr().out.startswith("Prompt processing + decoding time: ")


@pytest.mark.gpu
def test_gpu_generate_with_cuda_graphs(checkpoint, model, prompt):
    """On CUDA, cg=True decodes through captured graphs (kept on the model across calls) with the same
    tokens as eager decoding, and the step logits agree with the CPU reference."""
    gpu = MambaLMHeadModel.from_pretrained(checkpoint, device="cuda", dtype=torch.float32).eval()
    ids = prompt.cuda()
    eager = gpu.generate(ids, max_length=30, return_dict_in_generate=True, output_scores=True)
    graphed = gpu.generate(ids, max_length=30, cg=True, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(graphed.sequences, eager.sequences) and gpu._decoding_cache is not None
    for got, want in zip(graphed.scores, eager.scores):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(gpu.generate(ids, max_length=30, cg=True), eager.sequences)  # graphs reused
    cpu = model.generate(prompt, max_length=8, return_dict_in_generate=True, output_scores=True)
    torch.testing.assert_close(eager.scores[0].cpu(), cpu.scores[0], rtol=6e-4, atol=2e-3)
    torch.manual_seed(0)
    sampled = gpu.generate(ids, max_length=30, cg=True, top_k=40, top_p=0.9, temperature=0.7)
    assert sampled.shape == (2, 30) and sampled.device.type == "cuda"
