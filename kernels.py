"""
Fast paths for model.py, each beside the plain reference it must equal (test_all.py checks them).

- block-causal attention: compiled `flex_attention` with a cached block mask on CUDA, else the
  reference SDPA with a dense boolean mask (flex has no backward on CPU); chosen at call time.
- KV-cache attention: the queries of the block being denoised against [committed context, own block];
  no mask is needed, since a block sees every earlier block and itself.
- caption cross-attention: SDPA, or written out under torch.compile on CPU (the compiler fuses it).
- elementwise ops (LayerNorm + adaLN modulation, rotary embedding, GELU) stay plain: torch.compile of
  the whole network fuses them (teacher.py --compile, sample.py --compile).
Nothing compiles at import time. Timings of every path: `python bench.py` (docs/performance.md).
"""
import functools

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# elementwise ops


def modulate(x, shift, scale):
    """adaLN: LayerNorm without affine, then x * (1 + scale) + shift.
    x (B, F, N, D), shift / scale (B, F, 1, D)."""
    return F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift


def rope(x, cos, sin):
    """Rotary embedding on interleaved pairs. x (B, H, L, hd), cos / sin (L, hd/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class GELUTanh(torch.nn.Module):
    """GELU, tanh form. Eager runs ATen's kernel; compiled runs the equal sigmoid form, because
    inductor's vectorised tanh is slow on CPU (docs/performance.md)."""

    def forward(self, x):
        if torch.compiler.is_compiling():
            return gelu_sigmoid_form(x)
        return F.gelu(x, approximate="tanh")


def gelu_sigmoid_form(x):
    """0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3); equal within 1e-7."""
    return x * torch.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))


# -----------------------------------------------------------------------------
# constant tables, memoised

def eager_memo(fn):
    """Memoise a constant table per argument tuple when running eagerly (rebuilding the position
    tables every forward is a visible share of a batch-1 streaming rollout); under torch.compile
    the table is traced and folded into the graph instead."""
    tables = {}

    @functools.wraps(fn)
    def memo(*args):
        # inference tensors cannot be reused later under autograd: not memoised
        if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
            return fn(*args)
        if args not in tables:
            if len(tables) >= 1024:   # long streams make one entry per frame offset
                tables.clear()
            tables[args] = fn(*args)
        return tables[args]
    return memo


# -----------------------------------------------------------------------------
# block-causal attention: token i of block b attends to every token of blocks <= b

@eager_memo
def block_causal_mask(length, tokens_per_block, device="cpu"):
    """Dense boolean mask (L, L) for the reference path; True = may attend."""
    blk = torch.arange(length, device=device) // tokens_per_block
    return blk[None, :] <= blk[:, None]


@functools.lru_cache(maxsize=16)
def _flex_block_mask(length, tokens_per_block, device):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx // tokens_per_block <= q_idx // tokens_per_block
    return create_block_mask(mask_mod, None, None, length, length, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def block_causal_attention_ref(q, k, v, tokens_per_block):
    mask = block_causal_mask(q.shape[-2], tokens_per_block, str(q.device))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def block_causal_attention_flex(q, k, v, tokens_per_block):
    mask = _flex_block_mask(q.shape[-2], tokens_per_block, str(q.device))
    return _compiled_flex()(q, k, v, block_mask=mask)


def block_causal_attention(q, k, v, tokens_per_block):
    """q, k, v (B, H, L, hd). flex on CUDA (it skips the masked-out blocks), else the reference."""
    if q.is_cuda:
        return block_causal_attention_flex(q, k, v, tokens_per_block)
    return block_causal_attention_ref(q, k, v, tokens_per_block)


# -----------------------------------------------------------------------------
# caption cross-attention and KV-cache attention

def cross_attention(q, k, v, mask):
    """Queries (B, H, L, hd) against the caption's K/V (B, H, Lt, hd), mask (B, Lt) True = real token.
    Compiled on CPU it runs written out, which inductor fuses: with ~24 keys that beats SDPA's flash
    kernel (docs/performance.md); elsewhere SDPA."""
    if torch.compiler.is_compiling() and not q.is_cuda:
        return cross_attention_written_out(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])


def cross_attention_written_out(q, k, v, mask):
    # every caption starts with BOS, so no row is all masked (no softmax over only -inf)
    s = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    return s.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1) @ v


def cache_attention(q, k, v, k_ctx=None, v_ctx=None):
    """A block's queries against committed context K/V (B, H, Lc, hd) plus the block's own K/V."""
    if k_ctx is not None:
        k = torch.cat([k_ctx, k], dim=2)
        v = torch.cat([v_ctx, v], dim=2)
    return F.scaled_dot_product_attention(q, k, v)
