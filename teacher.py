"""
Train the teacher: a bidirectional video DiT with flow matching and caption dropout (for CFG).

    python teacher.py                                       # the shipped recipe, tiny model, 2-core CPU
    python teacher.py --resume=true                         # continue out/teacher.pt exactly
    python teacher.py --preset=gpu                          # one GPU (bf16 autocast) -> out_gpu/
    torchrun --standalone --nproc_per_node=8 teacher.py --preset=gpu8
    python teacher.py --data=path/to/clips                  # your own clip.mp4 + clip.txt pairs
    python teacher.py --init=ckpt/teacher_28000.pt --lr=2e-4 --steps=5000 --seed=1 --out=out/ft   # fine-tune

Noise levels (docs/algorithms.md §1.4-1.5): one per video, or for a share of the videos (--frame_noise) one
per frame (Diffusion Forcing); half of the videos get their first frame clean (image-to-video), so
where an object goes from a known start is the caption's word alone. Writes {out}/teacher.pt
(everything, for --resume) and {out}/teacher_ema.pt (EMA weights, configs and tokenizer: what
distill.py and sample.py need). Every step's batch, noise and caption dropout are a pure function of
(seed, step), so a resumed run equals an uninterrupted one, and N ranks with micro-batch b see the
data of one process with batch N*b.
"""
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import data
import model as M


@dataclass
class TrainConfig:
    model: str = "tiny"             # size preset from model.MODELS
    out: str = "out"                # output folder
    data: str = ""                  # folder of real clips; empty = the procedural world
    world_scale: float = 1.0        # the world's object radius and speed multiplier (2 with --model=tiny64)
    p_two: float = 0.2              # share of the world's clips with a second object
    two_apart: bool = False         # the world's two objects start where they never touch (data.WorldConfig)
    steps: int = 5000               # optimizer steps
    batch: int = 8                  # global batch (videos per step, all ranks together)
    micro_batch: int = 0            # videos per forward per rank; 0 = batch / ranks (no accumulation)
    lr: float = 6e-4                # peak learning rate (AdamW)
    warmup: int = 100               # linear warm-up steps
    min_lr: float = 0.05            # cosine decay floor, as a fraction of lr
    weight_decay: float = 0.01      # AdamW weight decay (matrices only)
    grad_clip: float = 1.0          # max gradient norm
    ema: float = 0.998              # EMA decay of the weights used for sampling
    p_uncond: float = 0.1           # caption dropout for classifier-free guidance
    frame_noise: float = 0.5        # share of videos noised with an independent level per frame
    first_clean: float = 0.5        # share of videos whose first frame is given clean (sigma 0, no loss)
    seed: int = 0                   # data, noise and init seed
    save_every: int = 200           # checkpoint every N steps (atomic)
    stop_at: int = 0                # stop after this step as if interrupted (0 = run to the end)
    resume: bool = False            # continue from {out}/teacher.pt
    init: str = ""                  # fine-tune from this teacher checkpoint's weights (a new optimizer and schedule)
    text_depth: int = 0             # caption encoder layers, 0 = the preset's; --init's added ones start as identity
    device: str = "auto"            # auto | cpu | cuda | mps
    compile: bool = True            # torch.compile the model, before DDP (faster steps after a compile)


PRESETS = {
    "cpu": dict(),                                                           # the shipped recipe
    "test": dict(steps=2, compile=False),                                    # seconds: checks an install
    "tiny64": dict(model="tiny64", world_scale=2.0),                         # the tiny world at 64 px (not run yet)
    "gpu": dict(model="wide", out="out_gpu", steps=4000, batch=64),         # one GPU, minutes (not run yet)
    "gpu8": dict(model="base", out="out_gpu8", steps=40000, batch=256, lr=2e-4),  # on paper, not run
}


def lr_at(step, cfg):
    """Linear warm-up, then cosine decay to min_lr * lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * p)))


def get_batch(cfg, world_cfg, tok, step, lo, hi, folder=None, device="cpu"):
    """Videos lo..hi-1 of step `step`'s global batch, with their noise, noise levels and dropout mask.
    Each clip depends on (seed, step, index) only, and is rendered on `device`; the noise is drawn
    for the whole global batch."""
    if folder is not None:
        x0, captions = folder.batch([cfg.seed, step], cfg.batch)
        x0, captions = x0[lo:hi], captions[lo:hi]
    else:
        x0, captions, _, _ = data.make_batch([[cfg.seed, step, i] for i in range(lo, hi)], world_cfg, device=device)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    eps = torch.randn((cfg.batch,) + tuple(x0.shape[1:]), generator=g)[lo:hi]
    # levels drawn like the sampler's grid, shift(U(0, 1)): motion is decided at the high noise
    # levels, where the shifted grid spends its first steps (docs/algorithms.md §1.4)
    shift = M.model_config(cfg.model).shift
    sigma = M.shift_sigma(torch.rand(cfg.batch, 1, generator=g), shift).expand(-1, x0.shape[1])
    # Diffusion-Forcing-style per-frame levels for a share of the videos: a cleaner frame beside
    # noisier ones can only be continued by reading the caption's direction
    per_frame = M.shift_sigma(torch.rand(cfg.batch, x0.shape[1], generator=g), shift)
    sigma = torch.where(torch.rand(cfg.batch, 1, generator=g) < cfg.frame_noise, per_frame, sigma)[lo:hi]
    drop = (torch.rand(cfg.batch, generator=g) < cfg.p_uncond)[lo:hi]
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    if cfg.first_clean:   # image-to-video: where the object goes from a known first frame is the caption's
        given = (torch.rand(cfg.batch, generator=g) < cfg.first_clean)[lo:hi]
        sigma = sigma.clone()
        sigma[given, 0] = 0.0
    return x0, tok.encode(captions), eps, sigma


def flow_loss(model, x0, ids, eps, sigma):
    """Flow-matching loss (docs/algorithms.md §1.1): mean ||v_hat - (eps - x0)||^2 at x_s = (1-s) x0 + s eps.
    sigma: (B,) one level per video, or (B, F) one per frame."""
    sig = sigma if sigma.ndim == 2 else sigma[:, None].expand(-1, x0.shape[1])
    v = model(M.add_noise(x0, eps, sig), sig, ids)
    err = (v.float() - (eps - x0).float()).pow(2).mean((2, 3, 4))                 # (B, F)
    keep = (sig > 0).float()          # a frame given clean (sigma 0) is context: no target to learn
    # mean over each video's kept frames, then over videos: the same whatever the split over ranks
    return ((err * keep).sum(1) / keep.sum(1).clamp_min(1)).mean()


def main(argv):
    cfg = M.parse_args(TrainConfig(), argv, PRESETS, __doc__)
    rank, world, device = M.setup(cfg.device, cfg.seed)
    master = rank == 0
    micro = cfg.micro_batch or cfg.batch // world
    if cfg.batch % (micro * world):
        sys.exit(f"error: --batch={cfg.batch} is not a multiple of micro_batch {micro} x {world} ranks")
    accum = cfg.batch // (micro * world)
    world_cfg = data.WorldConfig(size=M.MODELS[cfg.model]["size"], frames=M.MODELS[cfg.model]["frames"],
                                 scale=cfg.world_scale, p_two=cfg.p_two, two_apart=cfg.two_apart)
    folder = data.FolderClips(cfg.data, world_cfg) if cfg.data else None
    ck_path, ema_path = os.path.join(cfg.out, "teacher.pt"), os.path.join(cfg.out, "teacher_ema.pt")

    # ---- build: tokenizer, model, EMA, optimizer (or restore all of it) ----
    ck = M.load_checkpoint(ck_path, "teacher-train") if cfg.resume else None
    init = M.load_checkpoint(cfg.init, ("teacher", "teacher-train")) if cfg.init and not ck else None
    tok_bytes = bytes((ck or init)["tokenizer"].tolist()) if ck or init else data.train_tokenizer(
        data.all_captions() + (folder.captions if folder else []))
    tok = data.Tokenizer(tok_bytes)
    mcfg = M.model_config(cfg.model, vocab=tok.vocab_size, text_len=tok.max_len,
                          **({"text_depth": cfg.text_depth} if cfg.text_depth else {}))
    if ck:
        M.check_same_config(ck["model_cfg"], mcfg, ck_path)
    if init:   # --text_depth may add caption encoder layers to the checkpoint's, nothing else
        d0 = init["model_cfg"]["text_depth"]
        M.check_same_config(init["model_cfg"], replace(mcfg, text_depth=min(mcfg.text_depth, d0)), cfg.init)
    torch.manual_seed(cfg.seed)
    net = M.DiT(mcfg).to(device)
    ema = M.DiT(mcfg).to(device).requires_grad_(False)
    decay, no_decay = [[p for p in net.parameters() if (p.ndim >= 2) == nd] for nd in (True, False)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))
    start = 0
    if ck:
        net.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        start = ck["step"]
        torch.set_rng_state(ck["rng"])
    else:
        if init:   # both the trained and the EMA weights start from the checkpoint's EMA; caption encoder
            # layers it lacks start as the identity (residual outputs zeroed, as adaLN-Zero does)
            for layer in net.text[d0:]:
                for out in (layer.self_attn.out_proj, layer.linear2):
                    torch.nn.init.zeros_(out.weight), torch.nn.init.zeros_(out.bias)
            missing, unexpected = net.load_state_dict(init["ema"], strict=False)
            new = tuple(f"text.{i}." for i in range(d0, mcfg.text_depth))
            assert not unexpected and all(k.startswith(new) for k in missing), (missing, unexpected)
        ema.load_state_dict(net.state_dict())
    fwd = torch.compile(net) if cfg.compile else net
    fwd = DDP(fwd) if world > 1 else fwd
    if master:
        os.makedirs(cfg.out, exist_ok=True)
        log = open(os.path.join(cfg.out, "teacher.log"), "a")
        print(f"config {asdict(cfg)}\nmodel {asdict(mcfg)}\n{M.count_params(net) / 1e6:.2f}M parameters, {world} "
              f"rank(s) x micro-batch {micro} x {accum} accumulation, device {device}", file=log, flush=True)
        print(f"teacher: {M.count_params(net) / 1e6:.2f}M params, {cfg.steps} steps of {cfg.batch} videos, "
              f"{world} rank(s), device {device}" + (f", resuming at step {start}" if ck else ""))

    def save(step):
        common = dict(step=step, model_cfg=asdict(mcfg), train_cfg=asdict(cfg), world=asdict(world_cfg),
                      tokenizer=torch.tensor(list(tok_bytes), dtype=torch.uint8))
        M.save_checkpoint(dict(kind="teacher-train", model=net.state_dict(), ema=ema.state_dict(),
                               opt=opt.state_dict(), rng=torch.get_rng_state(), **common), ck_path)
        M.save_checkpoint(dict(kind="teacher", ema=ema.state_dict(), **common), ema_path)

    # ---- the loop ----
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not master, dynamic_ncols=True,
               desc="teacher")
    t_start = time.perf_counter()
    for step in bar:
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        total = 0.0
        for a in range(accum):
            lo = (rank * accum + a) * micro
            batch = get_batch(cfg, world_cfg, tok, step, lo, lo + micro, folder, device)
            x0, ids, eps, sigma = (t.to(device) for t in batch)
            with M.autocast(device):
                loss = flow_loss(fwd, x0, ids, eps, sigma) / accum
            loss.backward()
            total += loss.item()
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        M.check_finite(total + gnorm.item(), "loss or gradient", step + 1, ck_path)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():   # EMA with a short warm-up so early samples are not stuck at init
            d = min(cfg.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - d)
        if master:
            line = (f"step {step + 1} | loss {total:.4f} | grad_norm {gnorm:.3f} | lr {lr_at(step, cfg):.2e} | "
                    f"{(time.perf_counter() - t0) * 1e3:.0f} ms")
            print(line, file=log, flush=True)
            bar.set_postfix_str(f"loss {total:.4f}")
            if (step + 1) % cfg.save_every == 0 or step + 1 == end:
                save(step + 1)
    if master:
        bar.close()
        minutes = (time.perf_counter() - t_start) / 60
        print(f"trained steps {start}-{end} in {minutes:.1f} min", file=log, flush=True)
        print(f"wrote {ck_path} and {ema_path} at step {end} ({minutes:.1f} min)")
    M.teardown()


if __name__ == "__main__":
    main(sys.argv[1:])
