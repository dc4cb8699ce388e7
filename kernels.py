"""
Fast paths for model.py, each beside the plain reference it must equal (test_all.py checks 1e-5).

    python kernels.py        # benchmark on this machine: compiled vs eager ops, flex vs SDPA attention

- block-causal attention: compiled `flex_attention` with a cached block mask, or the reference
  SDPA with a dense boolean mask. flex has no backward on CPU, so CPU training takes the
  reference; the choice is made at call time from the device and whether a gradient is needed.
- KV-cache attention: queries of the block being denoised against [committed context, own block];
  no mask is needed since a block sees all earlier blocks and itself.
- fused elementwise ops (LayerNorm + adaLN modulation, rotary embedding) through torch.compile.
Nothing compiles at import time: compilation happens on first use.
"""
import functools
import time

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# elementwise ops: references and their compiled versions


def modulate_ref(x, shift, scale):
    """adaLN: LayerNorm without affine, then x * (1 + scale) + shift. x (B, F, N, D), shift/scale (B, F, 1, D)."""
    return F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift


def rope_ref(x, cos, sin):
    """Rotary embedding on interleaved pairs. x (B, H, L, hd), cos/sin (L, hd/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


_compiled = {}
USE_COMPILED = False     # set by the scripts' --compile flag (model.py reads it at call time)


def compiled(name):
    """The torch.compile'd version of an op by name, compiled once on first call."""
    if name not in _compiled:
        _compiled[name] = torch.compile({"modulate": modulate_ref, "rope": rope_ref}[name], dynamic=False)
    return _compiled[name]


def modulate(x, shift, scale):
    return compiled("modulate")(x, shift, scale) if USE_COMPILED else modulate_ref(x, shift, scale)


def rope(x, cos, sin):
    return compiled("rope")(x, cos, sin) if USE_COMPILED else rope_ref(x, cos, sin)


# -----------------------------------------------------------------------------
# block-causal attention: token i of block b attends to every token of blocks <= b


@functools.lru_cache(maxsize=16)
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


_flex = None


def block_causal_attention_ref(q, k, v, tokens_per_block):
    mask = block_causal_mask(q.shape[-2], tokens_per_block, str(q.device))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def block_causal_attention_flex(q, k, v, tokens_per_block):
    global _flex
    if _flex is None:
        from torch.nn.attention.flex_attention import flex_attention
        _flex = torch.compile(flex_attention, dynamic=False)
    return _flex(q, k, v, block_mask=_flex_block_mask(q.shape[-2], tokens_per_block, str(q.device)))


USE_FLEX = False         # set by --flex; flex is used only where it can run (no CPU backward)


def block_causal_attention(q, k, v, tokens_per_block):
    """q, k, v (B, H, L, hd). flex where it runs (CUDA, or CPU without autograd), else the reference."""
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if USE_FLEX and (q.is_cuda or not needs_grad):
        return block_causal_attention_flex(q, k, v, tokens_per_block)
    return block_causal_attention_ref(q, k, v, tokens_per_block)


def cache_attention(q, k, v, k_ctx=None, v_ctx=None):
    """A block's queries against committed context K/V (B, H, Lc, hd) plus the block's own K/V."""
    if k_ctx is not None:
        k, v = torch.cat([k_ctx, k], dim=2), torch.cat([v_ctx, v], dim=2)
    return F.scaled_dot_product_attention(q, k, v)


# -----------------------------------------------------------------------------
# benchmark (the README quotes its output)

def _bench(fn, reps=20):
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


if __name__ == "__main__":
    torch.manual_seed(0)
    B, H, L, hd, D, tpb = 8, 4, 512, 32, 128, 128          # the tiny preset's shapes
    q, k, v = (torch.randn(B, H, L, hd) for _ in range(3))
    x, sh, sc = torch.randn(B, 8, 64, D), torch.randn(B, 8, 1, D), torch.randn(B, 8, 1, D)
    cos, sin = torch.randn(L, hd // 2), torch.randn(L, hd // 2)
    rows = [("block-causal attention fwd (L=512)", lambda: block_causal_attention_ref(q, k, v, tpb),
             lambda: block_causal_attention_flex(q, k, v, tpb), "sdpa", "flex"),
            ("modulate (LayerNorm + shift/scale)", lambda: modulate_ref(x, sh, sc),
             lambda: compiled("modulate")(x, sh, sc), "eager", "compiled"),
            ("rope", lambda: rope_ref(q, cos, sin), lambda: compiled("rope")(q, cos, sin), "eager", "compiled")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch {B}")
    for name, ref, fast, a, b in rows:
        t0, t1 = _bench(ref), _bench(fast)
        err = (ref() - fast()).abs().max().item()
        print(f"{name:38s} {a} {t0:7.2f} ms | {b} {t1:7.2f} ms | speed-up {t0 / t1:5.2f}x | max diff {err:.1e}")
