"""
Fast paths for model.py, each beside the plain reference it must equal (test_all.py checks 1e-5).

    python kernels.py        # benchmark on this machine: compiled vs eager ops, flex vs SDPA attention

- block-causal attention: compiled `flex_attention` with a cached block mask, or the reference
  SDPA with a dense boolean mask. flex has no backward on CPU, so CPU training takes the
  reference; the choice is made at call time from the device and whether a gradient is needed.
- KV-cache attention: queries of the block being denoised against [committed context, own block];
  no mask is needed since a block sees all earlier blocks and itself.
- caption cross-attention: SDPA, or written out under torch.compile on CPU (the compiler fuses it).
- elementwise ops (LayerNorm + adaLN modulation, rotary embedding, GELU), plain: torch.compile of
  the whole network fuses them (teacher.py --compile, sample.py --compile); GELU takes an equal
  form there that compiles faster on CPU.
Nothing compiles at import time: compilation happens on first use.
"""
import functools
import statistics
import time

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# elementwise ops (plain: compiling them alone sped a sampling rollout up 1.03x, README)


def modulate(x, shift, scale):
    """adaLN: LayerNorm without affine, then x * (1 + scale) + shift. x (B, F, N, D), shift/scale (B, F, 1, D)."""
    return F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift


def rope(x, cos, sin):
    """Rotary embedding on interleaved pairs. x (B, H, L, hd), cos/sin (L, hd/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class GELUTanh(torch.nn.Module):
    """GELU, tanh form. Eager runs ATen's kernel; compiled runs the equal sigmoid form, because
    inductor's vectorised tanh is slow on CPU (fwd + bwd of 4096 x 512: 4.7 ms vs 2.3 ms)."""

    def forward(self, x):
        return gelu_sigmoid_form(x) if torch.compiler.is_compiling() else F.gelu(x, approximate="tanh")


def gelu_sigmoid_form(x):
    """0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3); equal within 1e-7."""
    return x * torch.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))


# -----------------------------------------------------------------------------
# constant tables, memoised

def eager_memo(fn):
    """Memoise a constant table per argument tuple when running eagerly (rebuilding the position
    tables every forward cost ~5% of a batch-1 streaming rollout); under torch.compile the table
    is traced and folded into the graph as before (dynamo warns about functools.lru_cache)."""
    tables = {}

    @functools.wraps(fn)
    def memo(*args):
        if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():   # (inference tensors:
            return fn(*args)                                                  # no later autograd use)
        if args not in tables:
            if len(tables) >= 1024:   # long streams: one entry per frame offset
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


def cross_attention(q, k, v, mask):
    """Queries (B, H, L, hd) against the caption's K/V (B, H, Lt, hd), mask (B, Lt) True = real token.
    Compiled on CPU it runs written out, which inductor fuses: with 24 keys that beats SDPA's flash
    kernel (a compiled training step ~4% faster, paired timing; README); elsewhere SDPA."""
    if torch.compiler.is_compiling() and not q.is_cuda:
        return cross_attention_written_out(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])


def cross_attention_written_out(q, k, v, mask):
    # (every caption starts with BOS, so no row is all masked: no -inf-only softmax)
    s = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    return s.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1) @ v


def cache_attention(q, k, v, k_ctx=None, v_ctx=None):
    """A block's queries against committed context K/V (B, H, Lc, hd) plus the block's own K/V."""
    if k_ctx is not None:
        k, v = torch.cat([k_ctx, k], dim=2), torch.cat([v_ctx, v], dim=2)
    return F.scaled_dot_product_attention(q, k, v)


# -----------------------------------------------------------------------------
# benchmark (the README quotes its output): one run, every ratio measured side by side

def _bench(fn, reps=20, warm=1):
    for _ in range(warm):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def dit_flops(cfg, q_frames, k_frames, text_len):
    """FLOPs (2 x multiply-adds) of one DiT forward of one video: q_frames frames of queries attending
    to k_frames frames of keys (the attention really computed: dense masks count in full).
    Per query token and layer: 14 D^2 (q, kv, proj, cross q, cross proj: 6 D^2; MLP 8 D^2) plus
    2 D (k_frames N + text_len) for scores and values; per video and layer: cross kv 2 D^2 text_len,
    adaLN 6 D^2 per frame; then patch in/out 2 P D per token, caption encoder 12 D^2 + 2 text_len D
    per caption token, timestep MLP 2 D^2 + ada_out 2 D^2 per frame."""
    D, N, P, L = cfg.dim, (cfg.size // cfg.patch) ** 2, cfg.channels * cfg.patch ** 2, cfg.depth
    tq, tk = q_frames * N, k_frames * N
    layer = tq * (14 * D * D + 2 * D * (tk + text_len)) + 2 * D * D * text_len + 6 * D * D * q_frames
    rest = tq * 2 * P * D + text_len * (12 * D * D + 2 * text_len * D) * cfg.text_depth + 4 * D * D * q_frames
    return 2 * (L * layer + rest)


def rollout_flops(cfg, schedules):
    """FLOPs of model.rollout for one video: per block, its denoising forwards and one commit pass
    (none after the last block)."""
    fpb, nb = cfg.frames_per_block, len(schedules)
    return sum((len(sched) + (b < nb - 1)) * dit_flops(cfg, fpb, (b + 1) * fpb, cfg.text_len) for b, sched in enumerate(schedules))


def benchmark(ckpt, threads):
    import data
    import model as M
    import teacher
    torch.manual_seed(0)
    if threads:
        torch.set_num_threads(threads)
    a = torch.randn(2048, 2048)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    row = lambda name, t, flops=None: print(f"  {name:58s} {t:9.2f} ms" + (f" | {flops / t / 1e6:6.1f} GFLOP/s = "
                                                                       f"{flops / t * 1e3 / peak * 100:4.0f}% of peak" if flops else ""))
    # -- 1. a teacher training step (flow matching, batch 8), eager vs torch.compile of the whole net --
    tcfg = M.model_config("tiny")
    net = M.DiT(tcfg)
    x0, eps, ids = torch.randn(8, tcfg.frames, 3, 32, 32), torch.randn(8, tcfg.frames, 3, 32, 32), torch.randint(3, 30, (8, tcfg.text_len))
    sig = torch.rand(8)

    def train_step(f):   # as in teacher.py: gradients set to None, then one backward (no accumulation)
        net.zero_grad(set_to_none=True)
        teacher.flow_loss(f, x0, ids, eps, sig).backward()
    fl = 3 * 8 * dit_flops(tcfg, tcfg.frames, tcfg.frames, tcfg.text_len)
    print(f"1. teacher training step, batch 8 x {tcfg.frames} frames ({fl / 1e9:.1f} GFLOP = 3 x forward)")
    cnet = torch.compile(net)
    for _ in range(5):   # compiles
        train_step(cnet)
    # rounds of (matmul peak, eager steps, compiled steps), medians: this CPU's speed drifts by ~10%
    # within minutes, so the share of peak and the speed-up compare times taken side by side
    rounds = [(_bench(lambda: a @ a, 4), _bench(lambda: train_step(net), 2), _bench(lambda: train_step(cnet), 2))
              for _ in range(7)]
    t_peak, t_eager, t_comp = map(statistics.median, zip(*rounds))
    peak = 2 * 2048 ** 3 / t_peak * 1e3
    print(f"  fp32 matmul peak (2048^3), median of 7 rounds between the steps: {peak / 1e9:.1f} GFLOP/s (every % of peak below)")
    row("eager", t_eager, fl), row("torch.compile(net)", t_comp, fl)
    grads = []
    for f in (net, cnet):   # the same step's gradients, eager and compiled
        train_step(f)
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    print(f"  compiled / eager speed-up {t_eager / t_comp:.2f}x | gradients ||diff|| / ||g|| "
          f"{((grads[1] - grads[0]).norm() / grads[0].norm()).item():.1e}")
    # where the compiled step's time goes (profiler self time per op): the matmuls' own share of peak
    # bounds what the whole step can reach; attention = score and value FLOPs (self + cross)
    from torch.profiler import profile
    with profile() as prof:
        for _ in range(3):
            train_step(cnet)
    ms = {"matmul": 0.0, "attention": 0.0, "elementwise and overhead": 0.0}
    for e in prof.key_averages():
        kind = "matmul" if e.key in ("aten::mm", "aten::addmm", "aten::bmm") else \
            "attention" if "scaled_dot_product" in e.key else "elementwise and overhead"
        ms[kind] += e.self_cpu_time_total / 3e3
    n_tok = tcfg.frames * (tcfg.size // tcfg.patch) ** 2
    attn = 3 * 8 * 2 * tcfg.depth * n_tok * 2 * tcfg.dim * (n_tok + tcfg.text_len)
    print("  compiled step by op kind (torch.profiler): " + " | ".join(
        f"{k} {v:.0f} ms" + (f" ({f / v / 1e6 / peak * 1e9 * 100:.0f}% of peak)" if f else "")
        for (k, v), f in zip(ms.items(), (fl - attn, attn, 0))))
    # -- 2. few-step sampling from the shipped student: steps, FFE, latency, the compiled sampler --
    ck = M.load_checkpoint(ckpt, "student")
    G = M.build_model(ck).eval()
    mc, nb = G.cfg, G.cfg.frames // G.cfg.frames_per_block
    tok = data.Tokenizer(bytes(ck["tokenizer"].tolist()), max_len=mc.text_len)
    sig4 = M.few_step_sigmas(4, mc.shift)
    B = 64
    caps = [data.make_clip([0, 3, i], data.WorldConfig(frames=1))[1] for i in range(B)]
    idsB, noise = tok.encode(caps), torch.randn(B, mc.frames, 3, mc.size, mc.size)
    sample = lambda n, ffe, b=B, frames=mc.frames, window=0: torch.no_grad()(M.rollout)(
        G, noise[:b, :frames] if frames <= mc.frames else torch.randn(b, frames, 3, mc.size, mc.size),
        idsB[:b], M.block_schedules(frames // mc.frames_per_block, n, ffe, sig4), window=window)
    print(f"2. sampling the student ({ckpt}), batch {B} x {mc.frames} frames, KV cache; FLOPs counted per rollout")
    settings, ts, fps = [(4, 0, "4"), (2, 4, "2*"), (2, 0, "2"), (1, 4, "1*"), (1, 0, "1")], {}, {}
    for r in range(3):   # rounds over the settings, medians (the ratios compare times taken side by side)
        for n, ffe, lab in settings:
            ts.setdefault(lab, []).append(_bench(lambda: sample(n, ffe), 1, warm=int(r == 0)))
    for n, ffe, lab in settings:
        t = statistics.median(ts[lab])
        fps[lab] = B * mc.frames / t * 1e3
        row(f"{lab:2s} steps: {fps[lab]:7.0f} frames/s", t, B * rollout_flops(mc, M.block_schedules(nb, n, ffe, sig4)))
    fwd1, fwd4 = 2 * nb - 1, 5 * nb - 1      # forwards per rollout: steps per block + a commit after all but the last
    print(f"  1-step / 4-step throughput {fps['1'] / fps['4']:.2f}x (ceiling ~{fwd4 / fwd1:.2f}x = {fwd4} / {fwd1} forwards) | "
          f"1* / 4 {fps['1*'] / fps['4']:.2f}x | 2 / 4 {fps['2'] / fps['4']:.2f}x")
    first = {}
    for lab, n, ffe in [("1", 1, 0), ("1*", 1, 4), ("4", 4, 0)]:
        t0 = time.perf_counter()
        with torch.no_grad():
            M.rollout(G, noise[:1], idsB[:1], M.block_schedules(nb, n, ffe, sig4),
                      on_block=lambda b, x: first.setdefault(lab, time.perf_counter() - t0))
    print("  latency to the first frame (batch 1): " + " | ".join(f"{k} {v * 1e3:.1f} ms" for k, v in first.items()))
    # the whole student compiled (a few graphs: shapes that change turn symbolic on recompiling);
    # sample() and no_cache() read G when called, so rebinding G switches it between eager and compiled
    G_eager, t0 = G, time.perf_counter()
    G = G_comp = M.compile_sampler(G_eager)   # what sample.py --compile=true runs
    sample(1, 0), sample(1, 0)                # compiles
    compile_s, eager_ms, comp_ms = time.perf_counter() - t0, [], []
    for _ in range(5):                        # eager and compiled alternated, medians
        for times, G in ((eager_ms, G_eager), (comp_ms, G_comp)):
            times.append(_bench(lambda: sample(1, 0), 1, warm=0))
    t_e, t_c = statistics.median(eager_ms), statistics.median(comp_ms)
    compile_s -= 2 * t_c / 1e3
    with torch.no_grad():
        a_ = M.rollout(G, noise[:8], idsB[:8], M.block_schedules(nb, 2, 0, sig4), generator=torch.Generator().manual_seed(1))
        b_ = M.rollout(G_eager, noise[:8], idsB[:8], M.block_schedules(nb, 2, 0, sig4), generator=torch.Generator().manual_seed(1))
    G = G_eager
    print(f"  torch.compile(student), 1 step: eager {t_e:.1f} ms, compiled {t_c:.1f} ms, speed-up {t_e / t_c:.2f}x | "
          f"max |diff| / max |x| {((a_ - b_).abs().max() / b_.abs().max()).item():.2e}, ||diff|| / ||x|| "
          f"{((a_ - b_).norm() / b_.norm()).item():.1e} | compile ~{compile_s:.0f} s")
    row("1  step, compiled (sample.py --compile=true)", t_c, B * rollout_flops(mc, M.block_schedules(nb, 1, 0, sig4)))
    # -- 3. streaming past the trained length with the rolling cache, and against no cache --
    fpb = mc.frames_per_block
    window, long = mc.frames - fpb, 4 * mc.frames
    print(f"3. streaming, batch 1, 1 step: {long} frames = 4x trained, rolling window {window} frames")
    times = []
    with torch.no_grad():
        for _ in range(3):
            stamps = [time.perf_counter()]
            M.rollout(G, torch.randn(1, long, 3, mc.size, mc.size), idsB[:1], M.block_schedules(long // fpb, 1, 0, sig4),
                      window=window, on_block=lambda b, x: stamps.append(time.perf_counter()))
            times.append(torch.tensor(stamps, dtype=torch.float64).diff())   # float32 would round to 8 ms
    per_block = torch.stack(times).median(0).values * 1e3   # ms per block (denoise + commit of the previous)
    print(f"  per-frame latency: frame {fpb} {per_block[1] / fpb:.2f} ms | last frame {per_block[-1] / fpb:.2f} ms | "
          f"ratio {per_block[-1] / per_block[1]:.2f}x")

    def no_cache(frames):   # every block recomputes the whole prefix: [clean prefix, noisy block]
        x = torch.randn(1, frames, 3, mc.size, mc.size)
        with torch.no_grad():
            for b in range(frames // fpb):
                sl = x[:, :(b + 1) * fpb]
                s_ = torch.zeros(1, (b + 1) * fpb)
                s_[:, -fpb:] = sig4[0]
                x[:, b * fpb:(b + 1) * fpb] = M.v_to_x0(sl, G(sl, s_, idsB[:1]), s_)[:, -fpb:]
    for frames, lab, G in ((mc.frames, "eager", G_eager), (64, "eager", G_eager), (64, "compiled", G_comp)):
        if lab == "compiled":   # first calls compile (automatic dynamic shapes: a few graphs each)
            sample(1, 0, b=1, frames=frames, window=window)
            no_cache(frames)
        t_cache = _bench(lambda: sample(1, 0, b=1, frames=frames, window=window if frames > mc.frames else 0), 2)
        t_none = _bench(lambda: no_cache(frames), 1)
        print(f"  {frames} frames, {lab:8s}: KV cache{' (rolling)' if frames > mc.frames else ''} {t_cache:8.1f} ms | "
              f"recompute prefix {t_none:8.1f} ms | speed-up {t_none / t_cache:5.1f}x")
    # -- 4. attention kernels: flex vs SDPA (tiny shapes) --
    print("4. attention kernels, tiny shapes, batch 8")
    B, H, L, hd, tpb = 8, 4, 512, 32, 128
    q, k, v = (torch.randn(B, H, L, hd) for _ in range(3))
    ref, fast = lambda: block_causal_attention_ref(q, k, v, tpb), lambda: block_causal_attention_flex(q, k, v, tpb)
    t0, t1 = _bench(ref), _bench(fast)
    print(f"  block-causal attention fwd (L=512): sdpa {t0:7.2f} ms | flex {t1:7.2f} ms | speed-up {t0 / t1:5.2f}x | "
          f"max diff {(ref() - fast()).abs().max().item():.1e}")


def scale_on_paper(peak_tflops=989.0, mfu=0.4):
    """Estimates, not runs: teacher training FLOPs per video (3 x forward) and the time per step of the
    GPU presets at `mfu` of a published bf16 dense peak (H100 SXM: 989 TFLOP/s)."""
    import model as M
    print(f"5. scale on paper (ESTIMATES, not runs): bf16 peak {peak_tflops:.0f} TFLOP/s per GPU at {mfu:.0%} utilisation")
    for preset, model, batch, gpus in (("teacher.py --preset=gpu", "small", 64, 1), ("teacher.py --preset=gpu8", "base", 256, 8)):
        cfg = M.model_config(model)
        per_video = 3 * dit_flops(cfg, cfg.frames, cfg.frames, cfg.text_len)
        step = per_video * batch / (gpus * peak_tflops * 1e12 * mfu)
        print(f"  {preset:26s} {model:5s} {cfg.size}px x {cfg.frames} frames, {(cfg.size // cfg.patch) ** 2 * cfg.frames} tokens: "
              f"{per_video / 1e12:6.2f} TFLOP per video | batch {batch} on {gpus} GPU(s): ~{step:.2f} s per step")


if __name__ == "__main__":
    import sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    benchmark(args.get("ckpt", "ckpt/asd_tiny.pt"), int(args.get("threads", 0)))
    scale_on_paper()
