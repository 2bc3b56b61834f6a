"""Fused linear + cross-entropy that never materialises the (t, v) logits.

Shapes (see ``mambakit.ops.reference``): hidden (t, d), weight (v, d), labels (t,).

Design: tokens are processed in chunks sized so that one chunk's logits fit ``CHUNK_LOGITS_BYTES``
(one buffer, reused by every chunk). Per chunk, cuBLAS computes logits = hidden_chunk @ weight.T; a Triton
kernel (one program per token) streams its logits row twice: an online log-sum-exp gives the token's
loss, then the row is overwritten in place with d(mean loss)/d(logits) = (softmax - onehot) / counted.
Two more GEMMs turn it into this chunk's grad_hidden and add its share of grad_weight. The gradients are
therefore complete when the forward returns; the backward only scales them by the incoming gradient.
The count of positions is a device tensor: nothing synchronises with the host.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Size of the one logits buffer (a chunk of tokens times the vocabulary).
CHUNK_LOGITS_BYTES = 256 * 2**20
BLOCK_V = 4096


@triton.jit
def _cross_entropy_rows_kernel(
    logits_ptr, labels_ptr, row_loss_ptr, inv_count_ptr, vocab, stride_logits, ignore_index,
    BLOCK_V: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
):
    """Per row (token): loss = logsumexp(logits) - logits[label] (0 when ignored); with COMPUTE_GRAD the
    row is replaced by (softmax(logits) - onehot(label)) * inv_count (zeros when ignored)."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_logits
    label = tl.load(labels_ptr + row)
    counted = label != ignore_index
    cols = tl.arange(0, BLOCK_V)

    running_max = float("-inf")
    running_sum = 0.0
    for start in range(0, vocab, BLOCK_V):
        values = tl.load(row_ptr + start + cols, mask=start + cols < vocab, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(values, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(values - new_max), axis=0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)
    label_logit = tl.load(row_ptr + tl.where(counted, label, 0)).to(tl.float32)
    tl.store(row_loss_ptr + row, tl.where(counted, lse - label_logit, 0.0))

    if COMPUTE_GRAD:
        scale = tl.where(counted, tl.load(inv_count_ptr), 0.0)
        for start in range(0, vocab, BLOCK_V):
            mask = start + cols < vocab
            values = tl.load(row_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
            grad = (tl.exp(values - lse) - tl.where(start + cols == label, 1.0, 0.0)) * scale
            tl.store(row_ptr + start + cols, grad.to(logits_ptr.dtype.element_ty), mask=mask)


def _chunk_rows(tokens: int, vocab: int, element_size: int) -> int:
    """Tokens per chunk: as many as fit CHUNK_LOGITS_BYTES, balanced over the chunks needed."""
    max_rows = max(1, CHUNK_LOGITS_BYTES // (vocab * element_size))
    return triton.cdiv(tokens, triton.cdiv(tokens, max_rows))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, grad_enabled):
        tokens, vocab = hidden.shape[0], weight.shape[0]
        want_hidden_grad = grad_enabled and ctx.needs_input_grad[0]
        want_weight_grad = grad_enabled and ctx.needs_input_grad[1]
        compute_grad = want_hidden_grad or want_weight_grad
        counted = (labels != ignore_index).sum()
        inv_count = 1.0 / counted.clamp(min=1).float()
        row_loss = torch.empty(tokens, dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if want_hidden_grad else None
        grad_weight = torch.empty_like(weight) if want_weight_grad else None

        chunk = _chunk_rows(tokens, vocab, hidden.element_size())
        logits_buffer = hidden.new_empty(chunk, vocab)
        for start in range(0, tokens, chunk):
            end = min(start + chunk, tokens)
            hidden_chunk, logits = hidden[start:end], logits_buffer[: end - start]
            torch.matmul(hidden_chunk, weight.T, out=logits)
            _cross_entropy_rows_kernel[(end - start,)](
                logits, labels[start:end], row_loss[start:end], inv_count, vocab, logits.stride(0), ignore_index,
                BLOCK_V=min(BLOCK_V, triton.next_power_of_2(vocab)), COMPUTE_GRAD=compute_grad, num_warps=8,
            )
            if want_hidden_grad:
                torch.matmul(logits, weight, out=grad_hidden[start:end])
            if want_weight_grad:
                if start == 0:
                    torch.matmul(logits.T, hidden_chunk, out=grad_weight)
                else:
                    grad_weight.addmm_(logits.T, hidden_chunk)
        ctx.grads = (grad_hidden, grad_weight)
        return row_loss.sum() * inv_count

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy keeps its gradients once: backward cannot run twice")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None  # scaled in place below: a second backward must not scale them again
        return (None if grad_hidden is None else grad_hidden.mul_(grad_loss.to(grad_hidden.dtype)),
                None if grad_weight is None else grad_weight.mul_(grad_loss.to(grad_weight.dtype)), None, None, None)


def linear_cross_entropy(hidden, weight, labels, ignore_index=-100):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``labels`` without the full logits.

    hidden: (t, d); weight: (v, d) in hidden's dtype; labels: (t,) int with ``ignore_index`` for positions
    that do not count. Returns a scalar fp32 loss (0 when no position counts). Peak extra memory: one
    chunk of logits (``CHUNK_LOGITS_BYTES``) besides the gradients.
    """
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype")
    return _LinearCrossEntropy.apply(hidden, weight, labels.contiguous(), ignore_index, torch.is_grad_enabled())
