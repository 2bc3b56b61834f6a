"""Pieces shared by the SSD forward and backward kernels: the launch geometry and small jit helpers."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

MAX_HEADS_PER_PROGRAM = 8  # heads whose dB / dC one backward program sums before writing

# Launch meta-parameters of the kernels built on tl.dot: (positions per program BLOCK_M, positions per
# inner-loop tile BLOCK_K (BLOCK_T for the chunk-state kernel), warps, pipeline stages). Picked for
# p = 64, n = 128 by compiling for sm_90a, where ptxas then reports no (or a few bytes of) register
# spills. Tiles shrink to the chunk when it is smaller. Exact fp32 products (fp32 inputs) run on CUDA
# cores, with their operands in registers: they need smaller tiles. The table follows the input dtype
# (not the dot type), so the interpreter runs bf16 inputs with the GPU's tiles.
TENSOR_CORE_TILES = {
    "chunk_state": (None, 64, 4, 3),
    "chunk_output": (64, 64, 4, 2),
    "chunk_input_grad": (64, 64, 8, 2),
    "chunk_C_grad": (64, 32, 8, 2),
}
FP32_TILES = {
    "chunk_state": (None, 32, 4, 1),
    "chunk_output": (32, 32, 8, 2),
    "chunk_input_grad": (32, 32, 8, 1),
    "chunk_C_grad": (32, 32, 8, 1),
}


@dataclass(frozen=True)
class ScanGeometry:
    """Sizes, tiles and dot precision of one ``ssd_scan`` call (x: (b, l, h, p), B: (b, l, g, n))."""

    batch: int
    length: int
    heads: int
    groups: int
    head_dim: int
    state_dim: int
    chunk: int
    block_p: int  # head_dim padded to a power of two >= 16 (tl.dot needs >= 16)
    block_n: int  # state_dim padded likewise
    block_h: int  # heads per program of the per-position dt kernels
    state_block: int  # state entries per program of the state-passing kernels
    heads_per_program: int  # heads looped over by one dB / dC program (divides heads // groups)
    dot_dtype: object  # operand type of tl.dot
    precision: str  # tl.dot input_precision
    fp32_inputs: bool  # selects FP32_TILES

    @property
    def n_chunks(self) -> int:
        return triton.cdiv(self.length, self.chunk)

    @property
    def padded_len(self) -> int:
        return self.n_chunks * self.chunk

    @property
    def heads_per_group(self) -> int:
        return self.heads // self.groups

    @property
    def state_size(self) -> int:
        return self.head_dim * self.state_dim

    def tiles(self, kernel: str) -> dict:
        """Launch meta-parameters of one of the tl.dot kernels (see TENSOR_CORE_TILES)."""
        rows, inner, warps, stages = (FP32_TILES if self.fp32_inputs else TENSOR_CORE_TILES)[kernel]
        inner = min(inner, self.chunk)
        if rows is None:
            return dict(BLOCK_T=inner, num_warps=warps, num_stages=stages)
        return dict(BLOCK_M=min(rows, self.chunk), BLOCK_K=inner, num_warps=warps, num_stages=stages)

    @classmethod
    def of(cls, x: torch.Tensor, B: torch.Tensor, chunk_size: int) -> "ScanGeometry":
        if chunk_size < 16 or chunk_size & (chunk_size - 1):
            raise ValueError(f"chunk_size must be a power of two >= 16, got {chunk_size}")
        batch, length, heads, head_dim = x.shape
        groups, state_dim = B.shape[2], B.shape[3]
        heads_per_group = heads // groups
        per_program = max(d for d in range(1, MAX_HEADS_PER_PROGRAM + 1) if heads_per_group % d == 0)
        if x.device.type == "cuda" and x.dtype in (torch.bfloat16, torch.float16):
            dot_dtype, precision = (tl.bfloat16 if x.dtype == torch.bfloat16 else tl.float16), "tf32"
        else:  # fp32 inputs, or the CPU interpreter (whose tl.dot mishandles bf16): exact fp32 products
            dot_dtype, precision = tl.float32, "ieee"
        return cls(
            batch=batch, length=length, heads=heads, groups=groups, head_dim=head_dim, state_dim=state_dim,
            chunk=chunk_size,
            block_p=max(16, triton.next_power_of_2(head_dim)), block_n=max(16, triton.next_power_of_2(state_dim)),
            block_h=min(16, triton.next_power_of_2(heads)),
            state_block=min(1024, triton.next_power_of_2(head_dim * state_dim)),
            heads_per_program=per_program, dot_dtype=dot_dtype, precision=precision,
            fp32_inputs=x.dtype == torch.float32,
        )


def segment_ids(seq_idx: torch.Tensor | None) -> torch.Tensor | None:
    """(b, l) int32: how many packed sequences start at or before each position (0 for the first).

    The state links positions s <= t exactly when their segment ids are equal, whatever values
    ``seq_idx`` takes (it may even return to an earlier value).
    """
    if seq_idx is None:
        return None
    starts = (seq_idx[:, 1:] != seq_idx[:, :-1]).to(torch.int32)
    return torch.cat([torch.zeros_like(starts[:, :1]), starts.cumsum(1, dtype=torch.int32)], dim=1).contiguous()


def strides(t: torch.Tensor | None, ndim: int = 4) -> tuple[int, ...]:
    """t's strides, or zeros for an absent optional tensor."""
    return tuple(t.stride()) if t is not None else (0,) * ndim


@triton.jit
def softplus(v):
    """log(1 + exp(v)) as torch computes it (identity above 20), accurate for very negative v."""
    e = tl.exp(tl.minimum(v, 20.0))
    u = 1.0 + e
    log1p_e = tl.where(u == 1.0, e, tl.log(u) * e / (u - 1.0))
    return tl.where(v > 20.0, v, log1p_e)


@triton.jit
def sigmoid(v):
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def matmul(a, b, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b on tensor cores: operands cast to DOT_DTYPE, fp32 accumulation."""
    return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), input_precision=PRECISION)


@triton.jit
def chunk_extent(chunk_idx, length, CHUNK: tl.constexpr):
    """(first position, int64; number of positions inside the sequence, int32) of a chunk.

    Kernels add the first position to their base pointers in int64 and index inside the chunk in int32,
    so that offsets stay exact at any sequence length.
    """
    chunk_start = chunk_idx.to(tl.int64) * CHUNK
    return chunk_start, tl.minimum(length - chunk_start, CHUNK).to(tl.int32)


@triton.jit
def chunk_segment_bounds(seg_ptr, batch_idx, chunk_start, chunk_len, length):
    """Segment ids (see ``segment_ids``) of the position before the chunk and of its last position.

    The state entering chunk 0 is the initial state, which belongs to segment 0 = segment of position 0.
    """
    row = seg_ptr + batch_idx * length
    return tl.load(row + tl.maximum(chunk_start - 1, 0)), tl.load(row + chunk_start + chunk_len - 1)
