"""
The network: one video diffusion transformer (DiT) for every role in the pipeline.

    teacher       causal=False   bidirectional, many-step flow matching (teacher.py)
    student       causal=True    block-causal, few steps, KV-cache streaming (distill.py, sample.py)
    fake score    causal=False   a copy of the teacher trained on student samples (distill.py)
    discriminator trunk          the fake score's hidden states (forward(..., features=True))

Layout, used everywhere: video (B, F, C, H, W) in [-1, 1]; each frame is cut into N = (H/p)(W/p)
patches, so tokens are (B, F*N, D), frame-major. Noise levels are per frame: sigma (B, F) in [0, 1].
Flow matching (rectified flow, docs/algorithms.md §1.1): x_s = (1 - s) x0 + s eps, the network
predicts v = eps - x0, and x0 = x_s - s v.
The bottom of the file holds what every script shares: the --key=value CLI, checkpoints, devices, DDP.
"""
import inspect
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels


@dataclass
class ModelConfig:
    size: int = 32              # frame height = width (pixels)
    frames: int = 8             # number of frames the model is trained on
    channels: int = 3           # RGB
    patch: int = 4              # patch side; tokens per frame = (size / patch) ** 2
    dim: int = 128              # width D
    depth: int = 4              # transformer blocks
    heads: int = 4              # attention heads (head dim = dim / heads)
    mlp_ratio: int = 4          # MLP hidden = mlp_ratio * dim
    text_depth: int = 1         # layers of the caption encoder
    vocab: int = 32             # tokenizer vocabulary size
    text_len: int = 24          # caption tokens including BOS
    causal: bool = False        # block-causal attention (student) or bidirectional (teacher)
    frames_per_block: int = 2   # frames denoised together by the causal student
    shift: float = 2.0          # timestep shift s: sigma -> s*sigma / (1 + (s-1)*sigma)
    rope: bool = True           # 3-D rotary embedding in self-attention (besides the absolute positions)


# size presets shared by the scripts; `tiny` trains on a 2-core CPU, `wide` is the one-GPU tier's
MODELS = {
    "test": dict(size=16, frames=4, patch=4, dim=32, depth=2, heads=2, frames_per_block=1),   # unit tests
    "tiny": dict(size=32, frames=8, patch=4, dim=128, depth=4, heads=4),
    "wide": dict(size=32, frames=8, patch=4, dim=256, depth=6, heads=4),      # the tiny world, one GPU
    "tiny64": dict(size=64, frames=8, patch=8, dim=256, depth=4, heads=4),    # tiny's tokens, 4x the pixels
    "small": dict(size=64, frames=16, patch=4, dim=384, depth=12, heads=6),
    "base": dict(size=128, frames=32, patch=4, dim=768, depth=16, heads=12),
}


# -----------------------------------------------------------------------------
# flow matching: noise levels and conversions (docs/algorithms.md §1)

def add_noise(x0, eps, sigma):
    """x_s = (1 - s) x0 + s eps; sigma broadcasts from (B, F)."""
    s = sigma[..., None, None, None]
    return (1 - s) * x0 + s * eps


def v_to_x0(x, v, sigma):
    return x - sigma[..., None, None, None] * v


def x0_to_v(x, x0, sigma):
    return (x - x0) / sigma[..., None, None, None]


def shift_sigma(u, shift):
    """The timestep shift of SD3 / Wan / Self Forcing; u is a uniform noise level in [0, 1]."""
    return shift * u / (1 + (shift - 1) * u)


def few_step_sigmas(n_steps, shift):
    """Self Forcing's warped list: timesteps [1000, 750, 500, 250] -> shift([1, .75, .5, .25])."""
    return [shift_sigma(1 - i / n_steps, shift) for i in range(n_steps)]


# -----------------------------------------------------------------------------
# positions

def sinusoidal(x, dim):
    """(...,) -> (..., dim) sinusoidal features of a scalar (noise level x 1000, or a position)."""
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2, device=x.device) / (dim // 2))
    ang = x[..., None].float() * freqs
    return torch.cat([ang.cos(), ang.sin()], dim=-1)


def _grid(f, r, c, rows, cols):
    """Per-axis tables f (F, d), r (rows, d), c (cols, d) -> (F*rows*cols, 3d), frame-major."""
    frames = len(f)
    return torch.cat([f[:, None, None].expand(-1, rows, cols, -1),
                      r[None, :, None].expand(frames, -1, cols, -1),
                      c[None, None, :].expand(frames, rows, -1, -1)], dim=-1).flatten(0, 2)


@kernels.eager_memo
def abs_positions(frames, rows, cols, dim, frame_start=0, device="cpu"):
    """Fixed sinusoidal (frame, row, col) embeddings added to the tokens, (F*h*w, dim). RoPE alone
    scores time and space offsets as separate terms; absolute codes in the tokens let the MLPs mix
    them, which motion ('v*dt pixels in dt frames') needs (docs/algorithms.md §2.4)."""
    d = dim // 3 // 2 * 2                                                    # even share per axis
    axis = lambda n, start=0: sinusoidal(torch.arange(start, start + n, device=device).float(), d)
    return F.pad(_grid(axis(frames, frame_start), axis(rows), axis(cols), rows, cols), (0, dim - 3 * d))


@kernels.eager_memo
def rope_tables(frames, rows, cols, head_dim, frame_start=0, device="cpu"):
    """cos / sin (frames*rows*cols, head_dim/2) of 3-D RoPE: the head dim is split between frame,
    row and column as in Wan (time gets the remainder)."""
    d_hw = 2 * (head_dim // 6)
    parts = [(torch.arange(frame_start, frame_start + frames), head_dim - 2 * d_hw),
             (torch.arange(rows), d_hw), (torch.arange(cols), d_hw)]
    angles = [pos.float()[:, None] * (1.0 / 100.0 ** (torch.arange(0, d, 2).float() / d)) for pos, d in parts]
    a = _grid(*angles, rows, cols)                                            # (F*h*w, hd/2)
    return a.cos().to(device), a.sin().to(device)


# -----------------------------------------------------------------------------
# the network

class KVCache:
    """Committed context for streaming (docs/algorithms.md §2.2): per layer, the clean K/V (B, H, L, hd)
    of the frames so far. A block is denoised against it (write=False), then committed with one
    forward at sigma=0 (write=True). With a window, only the last `window` frames are kept."""

    def __init__(self, depth, tokens_per_frame, window=0):
        self.k, self.v = [None] * depth, [None] * depth
        self.frames, self.tokens_per_frame, self.window, self.write = 0, tokens_per_frame, window, False

    def attend(self, i, q, k, v):
        out = kernels.cache_attention(q, k, v, self.k[i], self.v[i])
        if self.write:   # stored detached: no gradient ever flows through committed context
            k, v = k.detach(), v.detach()
            self.k[i] = k if self.k[i] is None else torch.cat([self.k[i], k], dim=2)
            self.v[i] = v if self.v[i] is None else torch.cat([self.v[i], v], dim=2)
            if self.window:
                keep = self.window * self.tokens_per_frame
                self.k[i], self.v[i] = self.k[i][:, :, -keep:], self.v[i][:, :, -keep:]
        return out


class Attention(nn.Module):
    def __init__(self, dim, heads, cross=False):
        super().__init__()
        self.heads, self.cross = heads, cross
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm, self.k_norm = nn.RMSNorm(dim // heads), nn.RMSNorm(dim // heads)   # QK-norm
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, ctx=None, ctx_mask=None, rope=None, attend=None):
        B, L, D = x.shape
        src = x if ctx is None else ctx
        q = self.q(x).view(B, L, self.heads, -1).transpose(1, 2)                  # (B, H, L, hd)
        k, v = self.kv(src).view(B, src.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.cross:
            o = kernels.cross_attention(q, k, v, ctx_mask)
        else:
            if rope is not None:
                q, k = kernels.rope(q, *rope), kernels.rope(k, *rope)
            o = attend(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """adaLN-Zero DiT block: self-attention, caption cross-attention, MLP. The modulation comes
    from the per-frame conditioning c (B, F, D), so frames at different noise levels coexist."""

    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.attn, self.cross = Attention(dim, heads), Attention(dim, heads, cross=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), kernels.GELUTanh(),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)   # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, c, ctx, ctx_mask, rope, attend):
        B, Fr = c.shape[:2]
        m = self.ada(F.silu(c))[:, :, None].chunk(6, dim=-1)                      # 6 x (B, F, 1, D)
        frames = lambda t: t.view(B, Fr, -1, t.shape[-1])                         # (B, F*N, D) -> (B, F, N, D)
        h = kernels.modulate(frames(x), m[0], m[1]).flatten(1, 2)
        x = x + (m[2] * frames(self.attn(h, rope=rope, attend=attend))).flatten(1, 2)
        x = x + self.cross(self.norm_cross(x), ctx, ctx_mask)
        h = kernels.modulate(frames(x), m[3], m[4]).flatten(1, 2)
        return x + (m[5] * frames(self.mlp(h))).flatten(1, 2)


class DiT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, p = cfg.dim, cfg.patch
        self.grid = cfg.size // p                                                 # patches per side
        # position tables of the trained frames as (unsaved) buffers: constants under torch.compile
        g = self.grid
        self.register_buffer("pos_table", abs_positions(cfg.frames, g, g, D), persistent=False)
        cos, sin = rope_tables(cfg.frames, g, g, D // cfg.heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.patch_in = nn.Linear(cfg.channels * p * p, D)
        self.t_embed = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        # caption encoder: token + position embeddings, a small transformer, a pooled vector
        self.tok = nn.Embedding(cfg.vocab, D)
        self.tok_pos = nn.Parameter(torch.randn(cfg.text_len, D) * 0.02)
        layer = lambda: nn.TransformerEncoderLayer(D, cfg.heads, cfg.mlp_ratio * D, 0.0, "gelu",
                                                   batch_first=True, norm_first=True)
        self.text = nn.ModuleList(layer() for _ in range(cfg.text_depth))
        self.text_pool = nn.Linear(D, D)
        self.blocks = nn.ModuleList(Block(D, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.ada_out = nn.Linear(D, 2 * D)
        self.patch_out = nn.Linear(D, cfg.channels * p * p)
        for m in (self.ada_out, self.patch_out):                                  # adaLN-Zero output
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def encode_text(self, ids):
        """ids (B, Lt) -> (ctx (B, Lt, D), mask (B, Lt) True = real token, pooled (B, D))."""
        mask = ids != 0
        h = self.tok(ids) + self.tok_pos[: ids.shape[1]]
        for layer in self.text:
            h = layer(h, src_key_padding_mask=~mask)
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return h, mask, self.text_pool(pooled)

    def forward(self, x, sigma, text, cache=None, features=False):
        """x (B, F, C, H, W), sigma (B, F), text = ids (B, Lt) or encode_text(ids) -> v (B, F, C, H, W).
        With a cache, x is one block of frames that continues the cached context.
        features=True also returns every block's hidden states (B, F*N, D) (discriminator trunk)."""
        B, Fr, C, H, W = x.shape
        p, g, cfg = self.cfg.patch, self.grid, self.cfg
        tokens = x.view(B, Fr, C, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(B, Fr * g * g, C * p * p)
        start = cache.frames if cache else 0
        # past the trained length the absolute embedding stays at the last trained frames, while
        # RoPE keeps the true offsets (docs/algorithms.md §2.4)
        pos = min(start, cfg.frames - Fr) if cache is not None else start
        rows = lambda t, f: t[f * g * g:(f + Fr) * g * g]                        # frames f..f+Fr-1 of a table
        trained = lambda f: f + Fr <= cfg.frames                                  # inside the buffers
        pe = rows(self.pos_table, pos) if trained(pos) else abs_positions(Fr, g, g, cfg.dim, pos, x.device)
        h = self.patch_in(tokens) + pe                                            # (B, F*N, D)
        rope = None
        if cfg.rope and trained(start):
            rope = (rows(self.rope_cos, start), rows(self.rope_sin, start))
        elif cfg.rope:
            rope = rope_tables(Fr, g, g, cfg.dim // cfg.heads, start, x.device)
        ctx, ctx_mask, pooled = self.encode_text(text) if torch.is_tensor(text) else text
        c = self.t_embed(sinusoidal(sigma * 1000, cfg.dim)) + pooled[:, None]     # (B, F, D)
        feats = []
        for i, block in enumerate(self.blocks):
            if cache is not None:
                attend = lambda q, k, v, i=i: cache.attend(i, q, k, v)
            elif cfg.causal:
                attend = lambda q, k, v: kernels.block_causal_attention(q, k, v, cfg.frames_per_block * g * g)
            else:
                attend = F.scaled_dot_product_attention
            h = block(h, c, ctx, ctx_mask, rope, attend)
            feats.append(h)
        if cache is not None and cache.write:
            cache.frames += Fr
        shift, scale = self.ada_out(F.silu(c))[:, :, None].chunk(2, dim=-1)       # (B, F, 1, D)
        out = self.patch_out(kernels.modulate(h.view(B, Fr, g * g, -1), shift, scale))
        v = out.view(B, Fr, g, g, C, p, p).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, Fr, C, H, W)
        return (v, feats) if features else v

    def new_cache(self, window=0):
        return KVCache(self.cfg.depth, self.grid ** 2, window)


# -----------------------------------------------------------------------------
# sampling: many-step Euler with CFG (teacher), few-step causal rollout (student)

@dataclass
class Compose:
    """Composable guidance (Liu et al. 2022) for captions that name several objects: while sigma >= until,
    x0 = x0_u + scale (x0_c - x0_u) + part_scale sum_k (x0_k - x0_u), with x0_k under part k's caption (one
    object alone); below `until`, and for the videos whose `has` is False, plain CFG. Plain CFG gives a
    direction word to the wrong one of two objects about half the time; this binds it (docs/results.md §6.2)."""
    parts: list                 # per part k, encode_text of the videos' k-th part captions ("" where none)
    has: torch.Tensor           # (B,) bool: the videos whose caption has parts
    scale: float = 1.0          # the whole caption's guidance while composing
    part_scale: float = 1.5     # each part's guidance
    until: float = 0.7          # compose at sigma >= until (the steps that lay out the clip)


def guided_x0(model, x, sigma, text_c, text_u, scale, compose=None):
    """Classifier-free guidance on x0, x0_u + scale (x0_c - x0_u), in one batched forward
    (docs/algorithms.md §5: scale 3 here is Self Forcing's guidance_scale 2); with `compose` (a Compose),
    composable guidance over the caption's parts in the same forward."""
    texts = [text_c, text_u] + (compose.parts if compose is not None else [])
    n = len(texts)
    cat = tuple(torch.cat(t) for t in zip(*texts))                      # a tuple, as encode_text returns
    xn, sn = torch.cat([x] * n), torch.cat([sigma] * n)
    x0_c, x0_u, *x0_parts = v_to_x0(xn, model(xn, sn, cat), sn).chunk(n)
    plain = x0_u + scale * (x0_c - x0_u)
    if compose is None:
        return plain
    composed = x0_u + compose.scale * (x0_c - x0_u) + compose.part_scale * sum(p - x0_u for p in x0_parts)
    return torch.where(compose.has.view(-1, 1, 1, 1, 1), composed, plain)


@torch.no_grad()
def euler_sample(model, noise, text_c, text_u, n_steps, scale, keep_sigmas=(), context=None, compose=None):
    """Many-step Euler sampler of the flow ODE with CFG on the uniform-then-shifted grid.
    Returns x0 and {sigma: x_sigma} for every grid sigma in keep_sigmas (ODE-init trajectories).
    context (B, k, C, H, W): the first k frames are given clean (sigma 0); only the rest is sampled.
    compose: a Compose, for captions naming several objects."""
    sigmas = [shift_sigma(1 - i / n_steps, model.cfg.shift) for i in range(n_steps)] + [0.0]
    x, kept, k0 = noise.clone(), {}, 0 if context is None else context.shape[1]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        for k in keep_sigmas:
            if abs(k - s) < 1e-6:
                kept[k] = x
        sig = torch.full(x.shape[:2], s, device=x.device)
        if k0:
            x[:, :k0], sig[:, :k0] = context, 0.0                               # (B, k, C, H, W) clean frames
        active = compose if compose is not None and s >= compose.until else None     # the layout steps
        x0 = guided_x0(model, x, sig, text_c, text_u, scale, active)
        # Euler: x_s' = x_s + (s' - s) v; the context frames (sigma 0) get a finite dummy v and are reset
        x = x + (s_next - s) * x0_to_v(x, x0, sig.clamp_min(1e-6))
    if k0:
        x[:, :k0] = context
    missing = [k for k in keep_sigmas if k not in kept]
    assert not missing, f"sigmas {missing} are not on the {n_steps}-step grid"
    return x, kept


def block_schedules(n_blocks, steps, first_steps=0, sigmas=None):
    """Per block, the sigmas it is denoised through: the first `steps` of the warped list, and
    `first_steps` for block 0 with First-Frame Enhancement (the paper's 1* / 2*; docs/algorithms.md §7)."""
    return [sigmas[:first_steps if (b == 0 and first_steps) else steps] for b in range(n_blocks)]


def rollout(G, noise, ids, schedules, grad=False, window=0, generator=None, trace=False, on_block=None,
            first_frame=None, switch=None):
    """Causal few-step generation with the KV cache (Self Forcing; docs/algorithms.md §2.2, §4.1).
    noise (B, F, C, H, W), F a multiple of frames_per_block (beyond the trained length with a rolling
    `window` of frames). Per block: denoise through its schedule, each step predicting x0 and
    re-noising it to the next sigma with fresh noise; the last forward is the block's exit and keeps
    its graph when grad=True; then a no-grad commit pass at sigma 0 writes the block's clean K/V
    (none after the last block: nothing reads it).
    first_frame (B, C, H, W): image-to-video, frame 0 is given clean (sigma 0) inside block 0.
    switch (frame, ids_b, recache): from that block boundary on, the caption ids_b; with recache, the
    cached window is first recomputed under ids_b (LongLive), else it keeps the old caption's K/V.
    Returns x0 (B, F, C, H, W), with trace=True also [block][step] -> x0 predictions.
    on_block(b, x0) is called as soon as block b is denoised (streaming display, latency)."""
    fpb, B, dev = G.cfg.frames_per_block, noise.shape[0], noise.device
    cache, outs, steps = G.new_cache(window), [], []
    with torch.set_grad_enabled(grad):
        text = G.encode_text(ids)
    for b, sched in enumerate(schedules):
        if switch is not None and b * fpb == switch[0]:
            text = G.encode_text(switch[1])
            if switch[2]:
                cache = recache(G, outs, text, window)
        x = noise[:, b * fpb:(b + 1) * fpb].contiguous()   # (B, fpb, C, H, W); contiguous: one compiled graph
        given = first_frame is not None and b == 0
        steps.append([])
        for k, s in enumerate(sched):
            exit_ = k == len(sched) - 1
            sig = torch.full((B, fpb), s, device=dev)
            if given:                                      # image-to-video: frame 0 is clean context
                x, sig = x.clone(), sig.clone()
                x[:, 0], sig[:, 0] = first_frame, 0.0
            with torch.set_grad_enabled(grad and exit_):   # gradient only through the exit forward
                x0 = v_to_x0(x, G(x, sig, text, cache=cache), sig)
            steps[-1].append(x0.detach())
            if not exit_:   # consistency-style: re-noise the x0 prediction to the next level
                eps = torch.randn(x.shape, generator=generator, device="cpu").to(dev)
                x = add_noise(x0.detach(), eps, torch.full((B, fpb), sched[k + 1], device=dev))
        outs.append(x0)
        if on_block:
            on_block(b, x0)
        if b == len(schedules) - 1:
            break
        with torch.no_grad():                              # commit: clean K/V of this block at sigma 0
            cache.write = True
            G(x0.detach(), torch.zeros(B, fpb, device=dev), text, cache=cache)
            cache.write = False
    video = torch.cat(outs, dim=1)
    return (video, steps) if trace else video


@torch.no_grad()
def recache(G, blocks, text, window):
    """A fresh KV cache of the committed blocks (their clean x0, (B, fpb, C, H, W) each) that a rolling
    `window` keeps, recomputed under the caption encoding `text` at their true frame offsets."""
    fpb = G.cfg.frames_per_block
    keep = len(blocks) if not window else min(len(blocks), -(-window // fpb))
    cache = G.new_cache(window)
    cache.frames, cache.write = (len(blocks) - keep) * fpb, True
    for x0 in blocks[len(blocks) - keep:]:
        G(x0, torch.zeros(x0.shape[:2], device=x0.device), text, cache=cache)
    cache.write = False
    return cache


# -----------------------------------------------------------------------------
# shared by the scripts: --key=value CLI with --help, checkpoints, devices and DDP

def help_text(cfg, presets, doc):
    """The script's docstring, every option with its default and its one-line comment, the presets."""
    comments = {}
    for line in inspect.getsource(type(cfg)).splitlines():
        m = re.match(r"\s+(\w+):[^#]*#\s?(.*)$", line)
        if m:
            comments[m.group(1)] = m.group(2)
    out = [(doc or "").strip(), "", "options (--key=value or --key value; -h / --help prints this):"]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        opt = f"--{f.name}={str(value).lower() if isinstance(value, bool) else value}"
        out.append(f"  {opt:34s} {comments.get(f.name, '')}")
    if presets:
        out += ["", "presets (--preset=name; options given beside it win):"]
        for name, over in presets.items():
            out.append(f"  {name:6s} " + (" ".join(f"--{k}={v}" for k, v in over.items()) or "(the defaults)"))
    return "\n".join(out)


def parse_args(cfg, argv, presets=None, doc=None):
    """Apply --preset=name then --key=value overrides to a dataclass; bad input exits with one line."""
    if "-h" in argv or "--help" in argv:
        print(help_text(cfg, presets, doc))
        sys.exit(0)
    kv, argv = {}, list(argv)
    while argv:   # --key=value or --key value
        a = argv.pop(0)
        if not a.startswith("--") or ("=" not in a and (not argv or argv[0].startswith("--"))):
            sys.exit(f"error: expected --key=value or --key value, got {a!r} (--help lists the options)")
        k, v = a[2:].split("=", 1) if "=" in a else (a[2:], argv.pop(0))
        kv[k.replace("-", "_")] = v
    if "preset" in kv:
        name = kv.pop("preset")
        if presets is None or name not in presets:
            sys.exit(f"error: unknown --preset={name} (choose from {', '.join(presets or [])})")
        kv = {**{k: str(v) for k, v in presets[name].items()}, **kv}
    types = {f.name: type(getattr(cfg, f.name)) for f in fields(cfg)}
    for k, v in kv.items():
        if k not in types:
            sys.exit(f"error: unknown option --{k} (--help lists the options)")
        t = types[k]
        try:
            val = {"true": True, "1": True, "false": False, "0": False}[v.lower()] if t is bool else t(v)
        except (ValueError, KeyError):
            sys.exit(f"error: --{k}={v} is not a valid {t.__name__}")
        setattr(cfg, k, val)
    return cfg


def model_config(preset_name, **over):
    return ModelConfig(**{**MODELS[preset_name], **over})


def save_checkpoint(obj, path):
    """Atomic write: a crash mid-write never leaves a truncated checkpoint behind."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path, kind=None):
    """Load a checkpoint dict (weights_only) or exit with one clear line."""
    if not os.path.exists(path):
        sys.exit(f"error: checkpoint {path} not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        sys.exit(f"error: checkpoint {path} is not a readable checkpoint ({type(e).__name__})")
    if not isinstance(ck, dict) or "model_cfg" not in ck:
        sys.exit(f"error: {path} is not a checkpoint of this repository")
    if kind and ck.get("kind") not in (kind if isinstance(kind, tuple) else (kind,)):
        sys.exit(f"error: {path} holds a {ck.get('kind')} checkpoint, expected {kind}")
    return ck


def check_same_config(saved, current, path):
    """--resume with a different model config would silently mix shapes: refuse with the difference."""
    diff = [f"{k}={saved.get(k)} (now {v})" for k, v in asdict(current).items() if saved.get(k) != v]
    if diff:
        sys.exit(f"error: {path} was made with another model config: {', '.join(diff)}")


def build_model(ck, weights="ema"):
    """Rebuild a DiT from a checkpoint alone: `weights` if it holds them, else its EMA, else its model."""
    model = DiT(ModelConfig(**ck["model_cfg"]))
    model.load_state_dict(ck[weights] if weights in ck else ck["ema"] if "ema" in ck else ck["model"])
    return model


def setup(device="auto", seed=0):
    """Device autodetect, TF32 on CUDA, and DDP from torchrun's RANK variable -> (rank, world, device)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True   # what is left in fp32 under bf16 autocast
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not torch.distributed.is_initialized():
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    torch.manual_seed(seed + rank)
    return rank, world, torch.device(device)


def autocast(device):
    """bf16 autocast on CUDA; a no-op elsewhere (fp32 on CPU, where bf16 matmuls are slow)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def compile_sampler(net):
    """torch.compile for KV-cached rollouts; automatic dynamic shapes (batch, cache length and frame
    offset turn symbolic once they change) let a few graphs serve a stream of any length."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    return torch.compile(net)


def teardown():
    """End a DDP run: wait for every rank (rank 0 may still be writing a checkpoint), destroy the
    process group and end the process at once. Left to the interpreter's shutdown, a gloo rank was
    sometimes aborted after its work was done ('terminate called without an active exception',
    about 1 two-rank CPU distill.py run in 8). A no-op without a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)


def broadcast_int(x, device):
    """A random choice that changes the graph (the exit step) must agree across ranks: rank 0's wins.
    A no-op without a process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    t = torch.tensor([x], device=device)
    torch.distributed.broadcast(t, 0)
    return int(t.item())


def check_finite(value, what, step, path):
    """Stop training with one line when a loss or gradient norm is not finite (bf16 makes this
    likelier); checkpoints are only written after good steps, so the last one stays intact."""
    if not math.isfinite(float(value)):
        last = f"the last good checkpoint is {path}" if path and os.path.exists(path) else "no checkpoint written"
        sys.exit(f"error: non-finite {what} ({float(value)}) at step {step}; {last}")


def count_params(m):
    return sum(p.numel() for p in m.parameters())
