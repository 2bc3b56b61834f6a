"""Full fine-tuning throughput of the mamba-1.4b shape: padding-free packing against padded batches.

Random weights (speed does not depend on their values), real OpenAssistant conversations from
../shared/data/chat rendered in ChatML with the GPT-NeoX tokenizer and cut at --max-length tokens, exactly as
``mambakit finetune`` prepares them. Every step is what the Trainer runs: bf16 autocast over fp32 master
weights, loss on assistant tokens, backward, gradient clipping, fused AdamW. Three batchings, the same number
of rows per micro-batch:

    packed           rows filled with several conversations by best-fit, seq_idx resets (mambakit's default)
    padded-grouped   one conversation per row, batches grouped by length (the fallback)
    padded-random    one conversation per row, random batches (the seed: every batch padded to its longest)

Reported per mode: trained tokens/s (real tokens, padding excluded), optimizer steps/s, padding share and
peak GPU memory. Run on a GPU:

    python benchmarks/finetune_throughput.py                      # writes benchmarks/results/finetune_throughput_*.json
    python benchmarks/finetune_throughput.py --gradient-checkpointing --batch-size 8
"""
from __future__ import annotations

import argparse
import datetime
import json
import random
import time
from pathlib import Path

import torch

from mambakit.config import MambaConfig
from mambakit.model import MambaLM
from mambakit.tokenizer import load_tokenizer
from mambakit.train.data import DataReport, to_examples
from mambakit.train.packing import PackedCollator, PaddedCollator, example_rows, packed_rows
from mambakit.train.rendering import IGNORE_INDEX, ExampleEncoder, resolve_template
from mambakit.train.sources import read_source

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MAMBA_1_4B = MambaConfig(model_type="mamba", d_model=2048, n_layer=48, vocab_size=50277)


def conversations(data_dir: Path, max_length: int, repeat: int) -> list:
    """The 200 oasst conversations as training examples (GPT-NeoX tokens), ``repeat`` times over."""
    tokenizer = load_tokenizer(data_dir / "tokenizers" / "gpt-neox-20b")
    encoder = ExampleEncoder(tokenizer, resolve_template("chatml", tokenizer), max_length)
    rows = read_source(str(data_dir / "chat" / "oasst1_en_200.chatml.jsonl")).train
    examples = encoder.encode(to_examples(rows, "chatml", DataReport(), tokenizer.eos_token), DataReport())
    return examples * repeat


def batches(examples: list, mode: str, batch_size: int, max_length: int, seed: int = 0) -> list[tuple[dict, int]]:
    """[(collated batch, its number of real tokens)] for one batching mode."""
    rng = random.Random(seed)
    if mode == "packed":
        rows, collate = packed_rows(examples, max_length), PackedCollator(pad_id=0)
        rng.shuffle(rows)
    else:
        rows, collate = example_rows(examples), PaddedCollator(pad_id=0)
        rng.shuffle(rows)
        if mode == "padded-grouped":  # as transformers' LengthGroupedSampler: sorted within mega-batches of 50
            mega = 50 * batch_size
            rows = [r for i in range(0, len(rows), mega)
                    for r in sorted(rows[i:i + mega], key=lambda r: -len(r["input_ids"]))]
    grouped = [(collate(rows[i:i + batch_size]), sum(len(r["input_ids"]) for r in rows[i:i + batch_size]))
               for i in range(0, len(rows) - batch_size + 1, batch_size)]
    if mode == "padded-grouped":
        rng.shuffle(grouped)
    return grouped


def train_steps(model, optimizer, mode_batches: list[dict]) -> None:
    """What the Trainer does per optimizer step (no accumulation)."""
    for batch in mode_batches:
        batch = {k: v.to(model.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4, help="rows per micro-batch (default 4)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--modes", default="packed,padded-grouped,padded-random")
    parser.add_argument("--data-dir", type=Path, default=SHARED, help=f"the shared data folder (default {SHARED})")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/finetune_throughput_*.json)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")

    examples = conversations(args.data_dir, args.max_length, repeat=8)
    model = MambaLM.from_config(MAMBA_1_4B, device="cuda", seed=0).train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    results = []
    for mode in args.modes.split(","):
        mode_batches = batches(examples, mode, args.batch_size, args.max_length)
        needed = args.warmup + args.steps
        if len(mode_batches) < needed:
            raise SystemExit(f"{mode}: only {len(mode_batches)} batches for {needed} steps; lower --steps")
        train_steps(model, optimizer, [batch for batch, _ in mode_batches[:args.warmup]])
        measured = mode_batches[args.warmup:needed]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        train_steps(model, optimizer, [batch for batch, _ in measured])
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        real_tokens = sum(count for _, count in measured)
        targets = sum(int((batch["labels"] != IGNORE_INDEX).sum()) for batch, _ in measured)
        positions = sum(batch["input_ids"].numel() for batch, _ in measured)
        results.append({
            "mode": mode, "steps": args.steps, "rows_per_step": args.batch_size,
            "tokens_per_second": real_tokens / seconds, "target_tokens_per_second": targets / seconds,
            "steps_per_second": args.steps / seconds, "padding_share": 1 - real_tokens / positions,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
        })
        print(f"{mode:15s} {results[-1]['tokens_per_second']:9.0f} tok/s  {results[-1]['steps_per_second']:5.2f} "
              f"steps/s  padding {results[-1]['padding_share']:6.1%}  peak {results[-1]['peak_gb']:5.1f} GB", flush=True)
    record = {"benchmark": "finetune_throughput", "model_shape": "mamba-1.4b (d_model 2048, 48 layers, vocab 50280)",
              "data": "oasst1_en_200 ChatML, GPT-NeoX tokens, cut at max_length", "max_length": args.max_length,
              "gradient_checkpointing": args.gradient_checkpointing, "precision": "bf16 autocast, fp32 master weights",
              "optimizer": "AdamW (fused), grad clip 1.0", "gpu": torch.cuda.get_device_name(),
              "torch": torch.__version__, "date": datetime.date.today().isoformat(), "results": results}
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / (
        f"finetune_throughput_{record['date']}_{torch.cuda.get_device_name().replace(' ', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
