"""Which op's kernel disagrees with its reference inside a whole model? Runs the tiny HF-made models of
tests/tiny_models.py through mambakit with every op computed twice (kernel and reference, on the same
inputs) and prints each op call whose results differ. Usage: python benchmarks/op_parity.py [cuda|cpu]"""
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import KINDS, VOCAB, hf_model  # noqa: E402

import mambakit  # noqa: E402
from mambakit import ops  # noqa: E402

TOLERANCE = 1e-3


def _clone(value):
    return value.clone() if torch.is_tensor(value) else value


def _describe(args):
    return [tuple(a.shape) if torch.is_tensor(a) else a for a in args if a is not None][:8]


def checking(op, kernel, reference):
    """A stand-in for ``op.reference`` that runs both implementations and reports disagreements."""
    def both(*args, **kwargs):
        expected = reference(*map(_clone, args), **{k: _clone(v) for k, v in kwargs.items()})
        actual = kernel(*args, **kwargs)
        pairs = zip(expected, actual) if isinstance(actual, tuple) else [(expected, actual)]
        for index, (e, a) in enumerate(pairs):
            diff = (e.float() - a.float()).abs().max().item()
            if not diff <= TOLERANCE:
                print(f"MISMATCH {op.name} output {index}: max |diff| {diff:.3g}; args {_describe(args)} "
                      f"{ {k: v for k, v in kwargs.items() if not torch.is_tensor(v)} }")
        return actual
    return both


def main(device: str) -> None:
    os.environ["MAMBAKIT_BACKEND"] = "reference"  # every call goes to the (wrapped) reference
    for op in ops.ALL_OPS:
        if op.kernel() is not None:
            op.reference = checking(op, op.kernel(), op.reference)
    for kind in KINDS:
        folder = tempfile.mkdtemp()
        reference_model = hf_model(kind)
        reference_model.save_pretrained(folder)
        model = mambakit.load_model(folder, device=device, dtype="float32")
        ids = torch.randint(0, VOCAB, (2, 300))
        with torch.no_grad():
            diff = (model(ids.to(device)).logits.cpu() - reference_model(ids).logits).abs().max().item()
        print(f"{kind}: logits max |diff| vs HF {diff:.3g}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cuda")
