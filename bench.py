"""
Benchmark: where the time goes, on this machine, every ratio measured side by side in one run.

    python bench.py                          # CPU: tiny model, fp32 (docs/performance.md quotes its output)
    python bench.py --device=cuda            # one GPU: bf16 autocast, the `small` teacher step too
    python bench.py --paper=true             # only the FLOP estimates of the GPU presets (no runs)

1. a teacher training step, eager vs torch.compile, as a share of the matmul peak measured between
   the steps (fp32 on CPU, bf16 on CUDA); 2. few-step sampling from the shipped student: frames/s at
   1 / 1* / 2 / 2* / 4 steps, latency to the first frame at batch 1, the compiled sampler; 3. streaming
   past the trained length with the rolling KV cache, per block; 4. flex vs SDPA block-causal
   attention; 5. the GPU presets on paper (estimates, not runs).
"""
import statistics
import sys
import time
from dataclasses import dataclass

import torch

import data
import kernels
import model as M
import sample
import teacher


@dataclass
class BenchConfig:
    ckpt: str = "ckpt/asd_tiny.pt"  # the student whose sampling is timed
    device: str = "auto"            # auto | cpu | cuda
    threads: int = 0                # CPU threads (0 = torch default)
    paper: bool = False             # only print the FLOP estimates of the GPU presets


# -----------------------------------------------------------------------------
# FLOP counts

def dit_flops(cfg, q_frames, k_frames, text_len):
    """FLOPs (2 x multiply-adds) of one DiT forward of one video: q_frames frames of queries attending
    to k_frames frames of keys (the attention really computed: dense masks count in full).
    Per query token and layer: 14 D^2 (q, kv, proj, cross q, cross proj: 6 D^2; MLP 8 D^2) plus
    2 D (k_frames N + text_len) for scores and values; per video and layer: cross kv 2 D^2 text_len,
    adaLN 6 D^2 per frame; then patch in / out 2 P D per token, caption encoder 12 D^2 + 2 text_len D
    per caption token, timestep MLP 2 D^2 + ada_out 2 D^2 per frame."""
    D, N, P, L = cfg.dim, (cfg.size // cfg.patch) ** 2, cfg.channels * cfg.patch ** 2, cfg.depth
    tq, tk = q_frames * N, k_frames * N
    layer = tq * (14 * D * D + 2 * D * (tk + text_len)) + 2 * D * D * text_len + 6 * D * D * q_frames
    text = text_len * (12 * D * D + 2 * text_len * D) * cfg.text_depth
    return 2 * (L * layer + tq * 2 * P * D + text + 4 * D * D * q_frames)


def rollout_flops(cfg, schedules):
    """FLOPs of model.rollout for one video: per block, its denoising forwards and one commit pass
    (none after the last block)."""
    fpb, nb = cfg.frames_per_block, len(schedules)
    return sum((len(sched) + (b < nb - 1)) * dit_flops(cfg, fpb, (b + 1) * fpb, cfg.text_len)
               for b, sched in enumerate(schedules))


# -----------------------------------------------------------------------------
# timing

def timed(fn, device, reps=20, warm=1):
    """Milliseconds per call (CUDA calls are synchronised around the timer)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warm):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps * 1e3


def training_step(device, preset):
    """1. A teacher training step (flow matching), eager vs compiled, and the matmul peak between them."""
    cfg, B = M.model_config(preset), 8 if device.type == "cpu" else 64
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    net = M.DiT(cfg).to(device)
    shape = (B, cfg.frames, 3, cfg.size, cfg.size)
    x0, eps = torch.randn(shape, device=device), torch.randn(shape, device=device)
    ids, sig = torch.randint(3, 30, (B, cfg.text_len), device=device), torch.rand(B, device=device)
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)

    def step(f):   # as in teacher.py: gradients set to None, then one backward (no accumulation)
        net.zero_grad(set_to_none=True)
        with M.autocast(device):
            loss = teacher.flow_loss(f, x0, ids, eps, sig)
        loss.backward()
    fl = 3 * B * dit_flops(cfg, cfg.frames, cfg.frames, cfg.text_len)
    print(f"1. teacher training step, {preset} model, batch {B} x {cfg.frames} frames, {dtype} "
          f"({fl / 1e9:.1f} GFLOP = 3 x forward)")
    cnet = torch.compile(net)
    for _ in range(5):   # compiles
        step(cnet)
    # rounds of (matmul peak, eager, compiled), medians: the speed of a CPU drifts within minutes
    rounds = [(timed(lambda: a @ a, device, 4), timed(lambda: step(net), device, 2),
               timed(lambda: step(cnet), device, 2)) for _ in range(7)]
    t_peak, t_eager, t_comp = map(statistics.median, zip(*rounds))
    peak = 2 * n ** 3 / t_peak * 1e3
    print(f"  {dtype} matmul peak ({n}^3), median of 7 rounds between the steps: {peak / 1e12:.3f} TFLOP/s")
    for name, t in (("eager", t_eager), ("torch.compile(net)", t_comp)):
        print(f"  {name:20s} {t:9.2f} ms | {fl / t / 1e9:8.3f} TFLOP/s = {fl / t * 1e3 / peak:5.1%} of peak")
    print(f"  compiled / eager speed-up {t_eager / t_comp:.2f}x")
    return peak


def sampling(device, ckpt, peak):
    """2. and 3. Few-step sampling, latency, the compiled sampler, streaming with the rolling cache."""
    ck = M.load_checkpoint(ckpt, "student")
    G, tok, n_max = sample.load(ck, device)
    mc, B, fpb = G.cfg, 64, G.cfg.frames_per_block
    nb, sig4 = mc.frames // fpb, M.few_step_sigmas(n_max, mc.shift)
    caps = [data.make_clip([0, 3, i], data.WorldConfig(frames=1))[1] for i in range(B)]
    ids = tok.encode(caps).to(device)
    noise = torch.randn(B, mc.frames, 3, mc.size, mc.size, device=device)
    run = lambda net, n, ffe, b=B, x=noise: sample.generate(net, ids[:b], None, x[:b], n, ffe, n_max)
    print(f"2. sampling the student ({ckpt}), batch {B} x {mc.frames} frames, KV cache")
    settings, ts = [(4, 0, "4"), (2, 4, "2*"), (2, 0, "2"), (1, 4, "1*"), (1, 0, "1")], {}
    for r in range(3):   # rounds over the settings, medians
        for n, ffe, lab in settings:
            ts.setdefault(lab, []).append(timed(lambda: run(G, n, ffe), device, 1, warm=int(r == 0)))
    fps = {}
    for n, ffe, lab in settings:
        t = statistics.median(ts[lab])
        fps[lab] = B * mc.frames / t * 1e3
        fl = B * rollout_flops(mc, M.block_schedules(nb, n, ffe, sig4))
        print(f"  {lab:2s} steps: {fps[lab]:9.0f} frames/s | {t:8.1f} ms | {fl / t * 1e3 / peak:5.1%} of peak")
    fwd1, fwd4 = 2 * nb - 1, 5 * nb - 1      # forwards: steps per block + a commit after all but the last
    print(f"  1-step / 4-step throughput {fps['1'] / fps['4']:.2f}x (ceiling {fwd4 / fwd1:.2f}x) | "
          f"1* / 4 {fps['1*'] / fps['4']:.2f}x | 2 / 4 {fps['2'] / fps['4']:.2f}x")

    def first_frame(net, n, ffe):   # ms until block 0 is out, batch 1
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        t0, out = time.perf_counter(), {}
        sample.generate(net, ids[:1], None, noise[:1], n, ffe, n_max,
                        on_block=lambda b, x: out.setdefault("t", (sync(), time.perf_counter())[1]))
        return (out["t"] - t0) * 1e3
    for lab, n, ffe in (("1", 1, 0), ("1*", 1, 4), ("4", 4, 0)):
        first_frame(G, n, ffe)
    lat = {lab: statistics.median(first_frame(G, n, ffe) for _ in range(5)) for lab, n, ffe in
           (("1", 1, 0), ("1*", 1, 4), ("4", 4, 0))}
    print("  latency to the first frame (batch 1): " + " | ".join(f"{k} {v:.1f} ms" for k, v in lat.items()))
    t0 = time.perf_counter()
    Gc = M.compile_sampler(G)                 # what sample.py --compile=true runs
    run(Gc, 1, 0)
    run(Gc, 1, 0)
    compile_s = time.perf_counter() - t0
    t_e = statistics.median(timed(lambda: run(G, 1, 0), device, 1, 0) for _ in range(5))
    t_c = statistics.median(timed(lambda: run(Gc, 1, 0), device, 1, 0) for _ in range(5))
    first_frame(Gc, 1, 4)
    lat_c = statistics.median(first_frame(Gc, 1, 4) for _ in range(5))
    print(f"  compiled sampler, 1 step: eager {t_e:.1f} ms, compiled {t_c:.1f} ms, speed-up {t_e / t_c:.2f}x | "
          f"cold compile ~{compile_s:.0f} s | compiled latency to the first frame at 1* {lat_c:.1f} ms")
    window, long = mc.frames - fpb, 4 * mc.frames
    print(f"3. streaming, batch 1, 1 step: {long} frames = 4x trained, rolling window {window} frames")
    for lab, net in (("eager", G), ("compiled", Gc)):
        times = []
        for _ in range(3):
            stamps = [time.perf_counter()]
            x = torch.randn(1, long, 3, mc.size, mc.size, device=device)
            stamp = lambda b, v: stamps.append(time.perf_counter())
            sample.generate(net, ids[:1], None, x, 1, 0, n_max, on_block=stamp)
            times.append(torch.tensor(stamps, dtype=torch.float64).diff())
        per_block = torch.stack(times).median(0).values * 1e3   # ms per block (denoise + previous commit)
        print(f"  {lab:8s} per block: second {per_block[1]:.2f} ms | last {per_block[-1]:.2f} ms | "
              f"last / second {per_block[-1] / per_block[1]:.2f}x")


def attention(device):
    """4. Block-causal attention: flex vs the SDPA reference (tiny shapes)."""
    B, H, L, hd, tpb = 8, 4, 512, 32, 128
    q, k, v = (torch.randn(B, H, L, hd, device=device) for _ in range(3))
    ref = lambda: kernels.block_causal_attention_ref(q, k, v, tpb)
    fast = lambda: kernels.block_causal_attention_flex(q, k, v, tpb)
    t0, t1 = timed(ref, device), timed(fast, device)
    print(f"4. block-causal attention fwd (L=512): sdpa {t0:7.2f} ms | flex {t1:7.2f} ms | {t0 / t1:5.2f}x "
          f"| max diff {(ref() - fast()).abs().max().item():.1e}")


def scale_on_paper(peak_tflops=989.0, mfu=0.4):
    """5. Estimates, not runs: teacher training FLOPs per video (3 x forward) and the time per step of
    the GPU presets at `mfu` of a published bf16 dense peak (H100 SXM: 989 TFLOP/s)."""
    print(f"5. scale on paper (ESTIMATES, not runs): bf16 peak {peak_tflops:.0f} TFLOP/s per GPU at {mfu:.0%}")
    for preset, size, batch, gpus in (("teacher.py --preset=gpu", "small", 64, 1),
                                      ("teacher.py --preset=gpu8", "base", 256, 8)):
        cfg = M.model_config(size)
        per_video = 3 * dit_flops(cfg, cfg.frames, cfg.frames, cfg.text_len)
        step = per_video * batch / (gpus * peak_tflops * 1e12 * mfu)
        tokens = (cfg.size // cfg.patch) ** 2 * cfg.frames
        print(f"  {preset:26s} {size:5s} {cfg.size}px x {cfg.frames} frames, {tokens} tokens: "
              f"{per_video / 1e12:6.2f} TFLOP per video | batch {batch} on {gpus} GPU(s): ~{step:.2f} s per step")


def main(argv):
    cfg = M.parse_args(BenchConfig(), argv, doc=__doc__)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.paper:
        _, _, device = M.setup(cfg.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"torch {torch.__version__}, {name}, {torch.get_num_threads()} CPU threads")
        torch.manual_seed(0)
        peak = training_step(device, "tiny")
        if device.type == "cuda":
            peak = training_step(device, "small")
        with torch.no_grad():
            sampling(device, cfg.ckpt, peak)
            attention(device)
    scale_on_paper()


if __name__ == "__main__":
    main(sys.argv[1:])
