"""
Distill the teacher into a causal few-step student: ODE init, then Self Forcing with DMD (+ ASD).

    python distill.py --stage=ode                      # stage 1: CausVid ODE init -> out/ode.pt
    python distill.py --method=dmd                     # stage 2 baseline: Self Forcing + DMD
    python distill.py --method=asd                     # stage 2: + Adversarial Self-Distillation
    python distill.py --method=asd --d_pair=true --d_loss=rpgan   # D: n vs n+1 steps of one noise, relativistic
    python distill.py --method=asd --d_pair=true --d_loss=rpgan --alpha_n=0.3,0.1,0.1   # + ASD weight per n
    python distill.py --resume=true --method=asd       # continue exactly after an interruption
    torchrun --standalone --nproc_per_node=2 distill.py --method=asd    # DDP (gloo on CPU)
    python distill.py --preset=gpu --teacher=out_gpu/teacher_ema.pt      # one GPU
    python distill.py --stage=dprobe --lr_d=1e-3 --d_sigma_max=0.3       # can D_n separate n from n+1 steps?

Papers, and the equations each loss follows: algorithms.md in the project's research notes.
  CausVid ODE init (Yin et al. 2025), Self Forcing (Huang et al. 2025), DMD / DMD2 (Yin et al.
  2023 / 2024), ASD + FFE (Yang et al. 2025, arXiv 2511.01419).
Checkpoints: {out}/{method}.pt holds everything for --resume; {out}/{method}_ema.pt is what
sample.py needs (EMA generator, configs, tokenizer). Every random draw of an iteration comes
from generators seeded by (seed, iteration, rank), so a resumed run equals an uninterrupted one.
"""
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
import kernels
import model as M


@dataclass
class DistillConfig:
    stage: str = "sf"               # ode: stage 1 (ODE init) | sf: stage 2 (Self Forcing rollout) | dprobe
    method: str = "asd"             # stage 2: dmd (baseline) | asd (DMD + adversarial self-distillation)
    teacher: str = "ckpt/teacher_tiny.pt"   # the teacher (real score; fake score and student init)
    init: str = "out/ode.pt"        # stage 2 starts the generator from this ODE-init checkpoint
    out: str = "out"                # output folder
    steps: int = 600                # iterations (stage 1: regression steps; stage 2: critic updates)
    batch: int = 8                  # global batch (videos per iteration, all ranks together)
    n_steps: int = 4                # the student's denoising steps N (warped list, Self Forcing)
    # stage 1
    ode_pairs: int = 256            # teacher ODE trajectories to regress on (384 before; 256 keeps the pipeline under 75 min)
    ode_euler: int = 16             # Euler steps per trajectory (a multiple of n_steps)
    ode_lr: float = 2e-4            # AdamW lr for the regression
    # stage 2
    lr_g: float = 5e-5              # generator lr
    lr_fake: float = 5e-5           # fake score lr
    lr_d: float = 1e-3              # discriminator head lr (1e-4 left the hinge loss at chance, 1.87-2.0)
    ratio: int = 5                  # two-time-scale: one generator update per `ratio` critic updates
    real_cfg: float = 3.0           # CFG scale of the real score (teacher), u + g (c - u)
    ema: float = 0.98               # EMA decay of the generator
    grad_clip: float = 10.0         # max gradient norm (Self Forcing)
    alpha: float = 0.3              # ASD weight: L_G = L_DMD + alpha * L_ASD (see alpha_adaptive)
    alpha_adaptive: bool = True     # alpha as a ratio: weight = alpha * |dL_DMD/dx| / |dL_ASD/dx| (VQGAN-style)
    d_loss: str = "hinge"           # hinge | rpgan (relativistic softplus, R3GAN) for ASD
    r1r2: float = 0.0               # rpgan: weight of the finite-difference R1/R2 penalty
    d_sigma_max: float = 0.3        # discriminator inputs are noised at sigma = shift(U(0.02, max)) (<= 0.46)
    d_trunk: bool = False           # the D loss also trains the fake-score trunk (DMD2); default: head only
    d_pair: bool = False            # D's n- and (n+1)-step samples start from the same noise (same content); default: independent
    d_blocks: bool = False          # D scores each frame block (one logit per block and n) instead of the whole video
    d_target: str = "next"          # D_n's 'real' side: the (n+1)-step output (next, the paper) | the N-step output (last)
    alpha_n: str = ""               # ASD weight per n, "a_1,...,a_{N-1}" (e.g. 0.3,0.1,0.1); empty: alpha for every n
    seed: int = 0                   # prompts, noise, exit steps
    save_every: int = 50            # checkpoint every N iterations (atomic)
    stop_at: int = 0                # stop after this iteration as if interrupted (0 = never)
    resume: bool = False            # continue {out}/{method}.pt
    device: str = "auto"            # auto | cpu | cuda | mps
    threads: int = 0                # CPU threads (0 = torch default)
    flex: bool = False              # block-causal attention (ODE stage) via compiled flex_attention; CUDA only for training
    compile: bool = False           # torch.compile generator, fake score and teacher: 1.4x once compiled, but a cold compile takes ~20 min on 2 cores (README)


PRESETS = {
    "tiny": dict(),
    "gpu": dict(teacher="out_gpu/teacher_ema.pt", init="out_gpu/ode.pt", out="out_gpu", batch=32,
                ode_pairs=4096, steps=3000),
    "gpu8": dict(teacher="out_gpu8/teacher_ema.pt", init="out_gpu8/ode.pt", out="out_gpu8", batch=128,
                 ode_pairs=16384, steps=3000),
}


# -----------------------------------------------------------------------------
# losses: small pure functions

def dmd_loss(x, teacher, fake, ids_c, ids_u, cfg, g):
    """DMD (Yin et al. 2023, eq. 7-8; Self Forcing dmd.py): noise the student sample, compare the
    real score (teacher, with CFG) and the fake score (trained on student samples) in x0 space.
    grad = (x0_fake - x0_real) / mean|x - x0_real| per sample; the loss 0.5 ||x - sg(x - grad)||^2
    has exactly that gradient (divided by the number of elements)."""
    B = x.shape[0]
    u = 0.02 + 0.96 * torch.rand(B, generator=g)
    sigma = M.shift_sigma(u, teacher.cfg.shift)[:, None].expand(-1, x.shape[1]).to(x.device)   # (B, F)
    with torch.no_grad():
        xt = M.add_noise(x, torch.randn(x.shape, generator=g).to(x.device), sigma)
        x0_real = M.guided_x0(teacher, xt, sigma, teacher.encode_text(ids_c), teacher.encode_text(ids_u), cfg.real_cfg)
        x0_fake = M.v_to_x0(xt, fake(xt, sigma, ids_c), sigma)
        norm = (x - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
        grad = torch.nan_to_num((x0_fake - x0_real) / norm)
    return 0.5 * F.mse_loss(x, (x - grad).detach())


def fake_score_loss(fake, x, ids, g):
    """The fake score learns the student's distribution: flow matching on student samples (DMD2)."""
    u = 0.02 + 0.96 * torch.rand(x.shape[0], generator=g)
    sigma = M.shift_sigma(u, fake.cfg.shift)[:, None].expand(-1, x.shape[1]).to(x.device)
    eps = torch.randn(x.shape, generator=g).to(x.device)
    return F.mse_loss(fake(M.add_noise(x, eps, sigma), sigma, ids), eps - x)


def hinge_d_loss(logit_real, logit_fake):
    """Hinge discriminator loss (Lim & Ye 2017; ADD): max(0, 1 - D(real)) + max(0, 1 + D(fake))."""
    return F.relu(1 - logit_real).mean() + F.relu(1 + logit_fake).mean()


def hinge_g_loss(logit_fake):
    """Hinge generator loss: -D(fake)."""
    return -logit_fake.mean()


def rpgan_d_loss(logit_real, logit_fake):
    """Relativistic pairing (R3GAN, the loss the ASD paper reportedly uses): softplus(-(D(real) - D(fake)))."""
    return F.softplus(-(logit_real - logit_fake)).mean()


def rpgan_g_loss(logit_fake, logit_real):
    return F.softplus(-(logit_fake - logit_real.detach())).mean()


# -----------------------------------------------------------------------------
# the ASD discriminator: the fake score's trunk + a small head with one logit per n

class DHead(nn.Module):
    """One learned query token per tapped block cross-attends to that block's hidden states (as in
    Self Forcing's GAN head and APT); the tokens -> MLP -> N-1 logits, logit n-1 is D_n, the
    critic of 'n steps vs n+1 steps'. One video-level logit: frame-wise critics collapse motion (AAD-1).
    With blocks > 1 (--d_blocks) the tokens of each frame block are pooled on their own: one logit per
    block, each block's hidden states having already seen the whole video (the trunk is bidirectional)."""

    def __init__(self, dim, heads, taps, n_logits, blocks=1):
        super().__init__()
        self.taps, self.blocks = taps, blocks
        self.tokens = nn.Parameter(torch.randn(len(taps), dim) * 0.02)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in taps)
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=True) for _ in taps)
        self.mlp = nn.Sequential(nn.LayerNorm(len(taps) * dim), nn.Linear(len(taps) * dim, dim), nn.SiLU(),
                                 nn.Linear(dim, n_logits))

    def forward(self, feats):
        B, nb = feats[0].shape[0], self.blocks
        feats = [f.reshape(B * nb, f.shape[1] // nb, f.shape[2]) for f in feats]    # (B * blocks, tokens, D)
        pooled = [attn(self.tokens[j].expand(B * nb, 1, -1), norm(feats[i]), norm(feats[i]), need_weights=False)[0][:, 0]
                  for j, (i, norm, attn) in enumerate(zip(self.taps, self.norms, self.attn))]
        return self.mlp(torch.cat(pooled, dim=-1)).view(B, nb, -1).transpose(1, 2)  # (B, n_logits, blocks)


def d_logits(fake, head, x, sigma, eps, ids, n):
    """D_n(Psi(x)): noise x to sigma (the paper's noising process Psi), run the fake-score trunk,
    read logit n-1 of the head: (B, blocks)."""
    _, feats = fake(M.add_noise(x, eps, sigma), sigma, ids, features=True)
    return head(feats)[:, n - 1]


# -----------------------------------------------------------------------------
# helpers

def all_reduce_grads(params, world):
    """Average gradients over ranks (used instead of DDP: a rollout calls the generator many times
    per backward, which DDP's one-forward-one-backward bookkeeping does not allow)."""
    if world > 1:
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world


def compiled(cfg, net):
    """With --compile=true, net under model.compile_sampler (attributes pass through to net), else net."""
    return M.compile_sampler(net) if cfg.compile else net


def prompts(cfg, it, rank, micro, tok, device):
    """This rank's captions for iteration `it` (training split: held-out triples never appear),
    with their unconditional counterparts. Distillation is data-free: only captions are used."""
    caps = [data.make_clip([cfg.seed, 7, it, rank * micro + i], data.WorldConfig(frames=1))[1] for i in range(micro)]
    return tok.encode(caps).to(device), tok.encode([""] * micro).to(device)




# -----------------------------------------------------------------------------
# stage 1: ODE init (CausVid, algorithms.md 3.1-3.2)

def stage_ode(cfg, rank, world, device, teacher, tok, tok_bytes, master):
    mc = M.ModelConfig(**{**asdict(teacher.cfg), "causal": True})
    student = M.DiT(mc).to(device)
    student.load_state_dict(teacher.state_dict())                     # initialised from the teacher
    sigmas = M.few_step_sigmas(cfg.n_steps, mc.shift)                  # the student's exact timesteps
    if cfg.ode_euler % cfg.n_steps:
        sys.exit(f"error: --ode_euler={cfg.ode_euler} must be a multiple of --n_steps={cfg.n_steps}")
    # teacher ODE trajectories on a grid that contains every student sigma; kept: x at each sigma and x0
    pairs_path = os.path.join(cfg.out, f"ode_pairs_{cfg.ode_pairs}_{cfg.ode_euler}.pt")
    if os.path.exists(pairs_path):
        states, x0s, ids_all = torch.load(pairs_path, weights_only=True)
    else:
        states, x0s, ids_all, teacher_fwd = [], [], [], compiled(cfg, teacher)
        chunk = 16
        for i in tqdm(range(0, cfg.ode_pairs, chunk), desc="teacher ODE trajectories", disable=not master):
            n = min(chunk, cfg.ode_pairs - i)
            caps = [data.make_clip([cfg.seed, 1, i + j], data.WorldConfig(frames=1))[1] for j in range(n)]
            ids = tok.encode(caps).to(device)
            g = torch.Generator().manual_seed(cfg.seed * 7919 + i)
            noise = torch.randn((n, mc.frames, mc.channels, mc.size, mc.size), generator=g).to(device)
            x0, kept = M.euler_sample(teacher_fwd, noise, teacher.encode_text(ids), teacher.encode_text(tok.encode([""] * n).to(device)),
                                      cfg.ode_euler, cfg.real_cfg, sigmas)
            states.append(torch.stack([kept[s] for s in sigmas], 1).cpu())          # (n, N, F, C, H, W)
            x0s.append(x0.cpu()), ids_all.append(ids.cpu())
        states, x0s, ids_all = torch.cat(states), torch.cat(x0s), torch.cat(ids_all)
        if master:
            torch.save((states, x0s, ids_all), pairs_path)
    student_fwd = compiled(cfg, student)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.ode_lr, betas=(0.9, 0.999), weight_decay=0.0)
    micro, nb = cfg.batch // world, mc.frames // mc.frames_per_block
    states_clean = torch.cat([states, x0s[:, None]], 1)                              # (P, N+1, F, C, H, W)
    sig_all = torch.tensor(sigmas + [0.0])
    bar = tqdm(range(cfg.steps), disable=not master, desc="ODE regression")
    t_start = time.perf_counter()
    for it in bar:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)
        idx = torch.randint(0, len(x0s), (cfg.batch,), generator=g)[rank * micro:(rank + 1) * micro]
        # per block, a random stored state (the same for every frame of the block); index N = clean
        j = torch.randint(0, cfg.n_steps + 1, (cfg.batch, nb), generator=g)[rank * micro:(rank + 1) * micro]
        j = j.repeat_interleave(mc.frames_per_block, dim=1)                           # (B, F)
        frames = torch.arange(mc.frames)
        x = states_clean[idx[:, None], j, frames[None]].to(device)                   # (B, F, C, H, W)
        sigma = sig_all[j].to(device)
        x0_hat = M.v_to_x0(x, student_fwd(x, sigma, ids_all[idx].to(device)), sigma)
        noisy = (sigma > 0)[..., None, None, None].float()                           # clean frames: no loss
        loss = (((x0_hat - x0s[idx].to(device)) ** 2) * noisy).sum() / (noisy.sum() * x[0, 0].numel()).clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_grads(student.parameters(), world)
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        if master:
            cfg._log.write(f"step {it + 1} | loss_ode {loss.item():.4f} | {(time.perf_counter() - t0) * 1e3:.0f} ms\n")
            cfg._log.flush()
            bar.set_postfix_str(f"loss {loss.item():.4f}")
    if master:
        M.save_checkpoint(dict(kind="student", ema=student.state_dict(), model=student.state_dict(), step=cfg.steps,
                               model_cfg=asdict(mc), train_cfg={k: v for k, v in asdict(cfg).items()},
                               world=cfg._world, tokenizer=torch.tensor(list(tok_bytes), dtype=torch.uint8)),
                          os.path.join(cfg.out, "ode.pt"))
        minutes = (time.perf_counter() - t_start) / 60
        cfg._log.write(f"ODE regression: {cfg.steps} steps in {minutes:.1f} min\n")
        print(f"wrote {os.path.join(cfg.out, 'ode.pt')} (regression {minutes:.1f} min)")


# -----------------------------------------------------------------------------
# stage 2: Self Forcing rollout + DMD, optionally + ASD

def build_sf(cfg, world, device, teacher, init):
    """Everything stage 2 trains, in one namespace: generator + EMA (from the ODE init), fake score
    (from the teacher), the ASD head, and their optimizers (Self Forcing 2.4: betas (0, 0.999))."""
    mc = M.ModelConfig(**init["model_cfg"])
    s = SimpleNamespace(cfg=cfg, mc=mc, world=world, device=device, teacher=teacher, N=cfg.n_steps,
                        sigmas=M.few_step_sigmas(cfg.n_steps, mc.shift),
                        micro=cfg.batch // world, nb=mc.frames // mc.frames_per_block)
    s.G = M.build_model(init, "model").to(device)
    s.G_ema = M.build_model(init, "model").to(device).requires_grad_(False)
    s.fake = M.DiT(teacher.cfg).to(device)                  # fake score: a trainable copy of the teacher
    s.fake.load_state_dict(teacher.state_dict())
    s.head = DHead(mc.dim, mc.heads, taps=list(range(mc.depth // 2, mc.depth)), n_logits=s.N - 1,
                   blocks=s.nb if cfg.d_blocks else 1).to(device)
    # compiled forwards; parameters, optimizers and checkpoints stay on the plain modules
    s.G_fwd, s.fake_fwd, s.teacher = (compiled(cfg, net) for net in (s.G, s.fake, teacher))
    s.opt_g = torch.optim.AdamW(s.G.parameters(), lr=cfg.lr_g, betas=(0.0, 0.999), weight_decay=0.01)
    s.opt_f = torch.optim.AdamW(s.fake.parameters(), lr=cfg.lr_fake, betas=(0.0, 0.999), weight_decay=0.01)
    s.opt_d = torch.optim.AdamW(s.head.parameters(), lr=cfg.lr_d, betas=(0.0, 0.99), weight_decay=0.0)
    return s


def video_noise(s, g):
    return torch.randn((s.micro, s.mc.frames, s.mc.channels, s.mc.size, s.mc.size), generator=g).to(s.device)


def student_rollout(s, n, ids, g, grad, noise=None):
    """The student's n-step output: Self Forcing rollout whose exit is step n for every block."""
    noise = video_noise(s, g) if noise is None else noise
    return M.rollout(s.G_fwd, noise, ids, M.block_schedules(s.nb, n, sigmas=s.sigmas), grad=grad, generator=g)


def step_optimizer(params, opt, s, loss=None):
    if loss is not None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
    params = list(params)
    all_reduce_grads(params, s.world)
    torch.nn.utils.clip_grad_norm_(params, s.cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def generator_step(s, n, ids, ids_u, g):
    """Generator update: L_DMD on the n-step rollout, + alpha * L_ASD when method=asd and n < N.
    The critics' params are frozen with requires_grad_(False) (no grads land on them), while
    input gradients still flow through D back to the rollout output, as they must."""
    cfg, stats = s.cfg, dict(n=n)
    s.fake.requires_grad_(False), s.head.requires_grad_(False)
    noise = video_noise(s, g)
    x = student_rollout(s, n, ids, g, grad=True, noise=noise)   # graph only through the exit forwards
    xd = x.detach().requires_grad_(True)
    l_dmd = dmd_loss(xd, s.teacher, s.fake_fwd, ids, ids_u, cfg, g)
    grad_x, = torch.autograd.grad(l_dmd, xd)
    stats.update(loss_dmd=l_dmd.item(), g_dmd=grad_x.norm().item())
    if cfg.method == "asd" and n < s.N:
        # ASD (Yang et al. 2025, Fig. 3): the n-step output should be indistinguishable from the
        # student's own (n+1)-step output (stop-gradient), both noised at one shared level
        sig, shape = d_sigma(s, g), x.shape
        eps = torch.randn(shape, generator=g).to(s.device)
        a = d_logits(s.fake_fwd, s.head, xd, sig, eps, ids, n)
        if cfg.d_loss == "hinge":
            l_asd = hinge_g_loss(a)
        else:
            with torch.no_grad():
                x_next = student_rollout(s, d_target(s, n), ids, g, grad=False, noise=noise if cfg.d_pair else None)
                eps_next = eps if cfg.d_pair else torch.randn(shape, generator=g).to(s.device)
                b = d_logits(s.fake_fwd, s.head, x_next, sig, eps_next, ids, n)
            l_asd = rpgan_g_loss(a, b)
        grad_asd, = torch.autograd.grad(l_asd, xd)
        # the two gradients live on unrelated scales (DMD's is divided by the number of pixels), so
        # by default alpha sets the ratio of their norms at x, as VQGAN's adaptive GAN weight does
        a_n = asd_alpha(cfg, n)
        weight = a_n * grad_x.norm() / grad_asd.norm().clamp_min(1e-12) if cfg.alpha_adaptive else a_n
        grad_x = grad_x + weight * grad_asd
        stats.update(loss_asd=l_asd.item(), g_asd=(weight * grad_asd).norm().item())
    x.backward(grad_x)        # = backward of L_DMD + alpha * L_ASD, one pass through the exits
    step_optimizer(s.G.parameters(), s.opt_g, s)
    s.fake.requires_grad_(True), s.head.requires_grad_(True)
    with torch.no_grad():
        for pe, p in zip(s.G_ema.parameters(), s.G.parameters()):
            pe.lerp_(p, 1 - cfg.ema)
    return stats


def fake_step(s, x, ids, g):
    """Fake-score update on fresh no-grad student samples x (DMD2 / Self Forcing critic)."""
    loss = fake_score_loss(s.fake_fwd, x, ids, g)
    step_optimizer(s.fake.parameters(), s.opt_f, s, loss)
    return dict(loss_fake=loss.item())


def d_features(s, x_n, x_n1, ids, g, grad=False):
    """Fake-score trunk features of the n-step output x_n and the (n+1)-step output x_n1, noised with
    the same sigma and the same noise, in one batched pass (with grad: --d_trunk). Returns (features of
    x_n, features of x_n1)."""
    sig, eps = d_sigma(s, g), torch.randn(x_n.shape, generator=g).to(s.device)
    both = M.add_noise(torch.cat([x_n, x_n1]), torch.cat([eps, eps]), torch.cat([sig, sig]))
    with torch.set_grad_enabled(grad):
        feats = s.fake_fwd(both, torch.cat([sig, sig]), torch.cat([ids, ids]), features=True)[1]
    return tuple(zip(*(f.chunk(2) for f in feats)))


def discriminator_step(s, n, x_n, x_n1, ids, g):
    """ASD discriminator update, head only: the fake-score trunk runs without grad ('frozen fake
    score', algorithms.md 6.2); with --d_trunk the D loss also trains the trunk, at the fake score's
    lr (DMD2's classifier on the fake score). 'real' = the (n+1)-step output x_n1 (N-step with
    --d_target=last), 'fake' = the n-step output x_n (both no-grad rollouts)."""
    cfg = s.cfg
    feats_f, feats_r = d_features(s, x_n, x_n1, ids, g, grad=cfg.d_trunk)
    lf, lr_ = s.head(feats_f)[:, n - 1], s.head(feats_r)[:, n - 1]
    if cfg.d_loss == "hinge":
        loss = hinge_d_loss(lr_, lf)
    else:
        loss = rpgan_d_loss(lr_, lf)
        if cfg.r1r2 > 0:   # finite-difference R1/R2 on the head's input (Self Forcing gan.py, sigma_r 0.01)
            jit = lambda fs: [f + 0.01 * torch.randn(f.shape, generator=g).to(s.device) for f in fs]
            r1 = ((s.head(jit(feats_r))[:, n - 1] - lr_) / 0.01).pow(2).mean()
            r2 = ((s.head(jit(feats_f))[:, n - 1] - lf) / 0.01).pow(2).mean()
            loss = loss + cfg.r1r2 * 0.5 * (r1 + r2)
    if cfg.d_trunk:
        s.opt_f.zero_grad(set_to_none=True)
    step_optimizer(s.head.parameters(), s.opt_d, s, loss)     # with d_trunk the backward fills the trunk's grads too
    if cfg.d_trunk:
        step_optimizer(s.fake.parameters(), s.opt_f, s)
    return dict(loss_d=loss.item(), d_real=lr_.mean().item(), d_fake=lf.mean().item())


TRAINED = ("G", "G_ema", "fake", "head", "opt_g", "opt_f", "opt_d")    # what a checkpoint restores


def stage_sf(cfg, rank, world, device, teacher, tok, tok_bytes, master):
    init = M.load_checkpoint(cfg.init, "student")
    s = build_sf(cfg, world, device, teacher, init)
    ck_path = os.path.join(cfg.out, f"{cfg.method}.pt")
    start = 0
    if cfg.resume:
        ck = M.load_checkpoint(ck_path, "student-train")
        M.check_same_config(ck["model_cfg"], s.mc, ck_path)
        for key in TRAINED:
            getattr(s, key).load_state_dict(ck[key])
        start = ck["step"]
        torch.set_rng_state(ck["rng"])

    def save(it):
        common = dict(step=it, model_cfg=asdict(s.mc), train_cfg=asdict(cfg), world=cfg._world,
                      tokenizer=torch.tensor(list(tok_bytes), dtype=torch.uint8))
        M.save_checkpoint(dict(kind="student-train", rng=torch.get_rng_state(),
                               **{k: getattr(s, k).state_dict() for k in TRAINED}, **common), ck_path)
        M.save_checkpoint(dict(kind="student", ema=s.G_ema.state_dict(), **common),
                          os.path.join(cfg.out, f"{cfg.method}_ema.pt"))

    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not master, dynamic_ncols=True)
    t_start = time.perf_counter()
    for it in bar:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + it) * 64 + rank)   # this rank's draws
        rnd = random.Random(cfg.seed * 1_000_003 + it)                              # draws shared by ranks
        ids, ids_u = prompts(cfg, it, rank, s.micro, tok, device)
        # the exit step n changes the graph, so all ranks must agree: drawn on rank 0, broadcast
        stats = {}
        if it % cfg.ratio == 0:                                   # two-time-scale update rule
            stats.update(generator_step(s, M.broadcast_int(rnd.randint(1, s.N), device), ids, ids_u, g))
        # critics: the fake score learns from the n-step samples; for ASD the same samples are D's
        # 'fake' side and one more rollout gives the (n+1)-step 'real' side (no D update when n = N)
        n = M.broadcast_int(rnd.randint(1, s.N), device)
        with torch.no_grad():
            noise = video_noise(s, g)
            x_n = student_rollout(s, n, ids, g, grad=False, noise=noise)
        stats.update(fake_step(s, x_n, ids, g))
        if cfg.method == "asd" and n < s.N:
            with torch.no_grad():
                x_n1 = student_rollout(s, d_target(s, n), ids, g, grad=False, noise=noise if cfg.d_pair else None)
            stats.update(discriminator_step(s, n, x_n, x_n1, ids, g))
        if master:
            line = f"step {it + 1} | " + " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in stats.items())
            cfg._log.write(line + f" | {(time.perf_counter() - t0) * 1e3:.0f} ms\n")
            cfg._log.flush()
            bar.set_postfix_str(f"fake {stats['loss_fake']:.3g}")
            if (it + 1) % cfg.save_every == 0 or it + 1 == end:
                save(it + 1)
    if master:
        bar.close()
        minutes = (time.perf_counter() - t_start) / 60
        cfg._log.write(f"trained iterations {start}-{end} in {minutes:.1f} min\n")
        print(f"wrote {ck_path} and {os.path.join(cfg.out, cfg.method + '_ema.pt')} at iteration {end} ({minutes:.1f} min)")


@torch.no_grad()
def d_accuracy(s, n, x_n, x_n1, ids, g):
    """Share of videos D_n classifies right: logit > 0 for the (n+1)-step side and < 0 for the n-step
    side (hinge); with the relativistic loss, whose logits only mean something in pairs, the share of
    pairs where the (n+1)-step side scores higher."""
    feats_f, feats_r = d_features(s, x_n, x_n1, ids, g)
    real, fake = s.head(feats_r)[:, n - 1], s.head(feats_f)[:, n - 1]
    if s.cfg.d_loss == "rpgan":
        return (real > fake).float().mean().item()
    return ((real > 0).float().mean() + (fake < 0).float().mean()).item() / 2


def stage_dprobe(cfg, rank, world, device, teacher, tok, tok_bytes, master, steps=200, n_train=64, n_test=32):
    """Diagnostic for the ASD discriminator settings (--lr_d, --d_sigma_max): fixed no-grad rollouts of
    the --init student at 1..N steps, a fresh D head trained by discriminator_step for `steps` updates
    on n_train prompts, then its accuracy on n_test other prompts per n (0.5 = chance)."""
    s = build_sf(cfg, world, device, teacher, M.load_checkpoint(cfg.init, "student"))
    P, g = n_train + n_test, torch.Generator().manual_seed(cfg.seed)
    caps = [data.make_clip([cfg.seed, 5, i], data.WorldConfig(frames=1))[1] for i in range(P)]
    ids, s.micro = tok.encode(caps).to(device), P
    z = video_noise(s, g) if cfg.d_pair else None                   # --d_pair: every n from the same noise
    outs = {n: student_rollout(s, n, ids, g, grad=False, noise=z) for n in range(1, s.N + 1)}
    s.micro = cfg.batch
    for step in tqdm(range(steps), desc="D probe", disable=not master):
        n, i = 1 + step % (s.N - 1), torch.randint(0, n_train, (cfg.batch,), generator=g)
        loss = discriminator_step(s, n, outs[n][i], outs[d_target(s, n)][i], ids[i], g)["loss_d"]
    s.micro, test = n_test, slice(n_train, P)
    acc = [d_accuracy(s, n, outs[n][test], outs[d_target(s, n)][test], ids[test], g) for n in range(1, s.N)]
    print(f"D probe lr_d {cfg.lr_d:g} d_sigma_max {cfg.d_sigma_max:g}: last loss_d {loss:.3f} | held-out accuracy "
          + " ".join(f"n={n} {a:.2f}" for n, a in enumerate(acc, 1)))


def d_target(s, n):
    """Step count of D_n's 'real' side: n + 1, the paper's adjacent step [INFERRED alternative: N, the
    student's best output, a larger gap for D to see at small n (--d_target=last)]."""
    return n + 1 if s.cfg.d_target == "next" else s.N


def asd_alpha(cfg, n):
    """The ASD weight at exit step n: --alpha, or the n-th entry of --alpha_n."""
    return float(cfg.alpha_n.split(",")[n - 1]) if cfg.alpha_n else cfg.alpha


def d_sigma(s, g):
    """Noise level shared by the pair fed to D: shift(U(0.02, d_sigma_max)), one per video. [INFERRED:
    the paper's noising process Psi is not specified. DMD's own range (max 0.98) drowned the n vs n+1
    difference: a head trained offline on fixed rollouts (--stage=dprobe) stayed at chance with it
    and reached 53-77% held-out accuracy with max 0.3 (README)]"""
    u = 0.02 + (s.cfg.d_sigma_max - 0.02) * torch.rand(s.micro, generator=g)
    return M.shift_sigma(u, s.mc.shift)[:, None].expand(-1, s.mc.frames).to(s.device)


def main(argv):
    cfg = M.parse_args(DistillConfig(), argv, PRESETS)
    if cfg.stage not in ("ode", "sf", "dprobe") or cfg.method not in ("dmd", "asd") or cfg.d_loss not in ("hinge", "rpgan"):
        sys.exit("error: --stage must be ode|sf|dprobe, --method dmd|asd, --d_loss hinge|rpgan")
    if cfg.d_target not in ("next", "last") or (cfg.alpha_n and len(cfg.alpha_n.split(",")) != cfg.n_steps - 1):
        sys.exit(f"error: --d_target must be next|last, --alpha_n needs n_steps - 1 = {cfg.n_steps - 1} comma-separated weights")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    kernels.USE_FLEX = cfg.flex     # kernels falls back to the SDPA reference where flex cannot run
    rank, world, device, _ = M.setup(cfg.device, cfg.seed)
    if cfg.batch % world:
        sys.exit(f"error: --batch={cfg.batch} is not divisible by {world} ranks")
    master = rank == 0
    tck = M.load_checkpoint(cfg.teacher, "teacher")
    teacher = M.build_model(tck).to(device).requires_grad_(False)     # the real score: frozen
    tok_bytes = bytes(tck["tokenizer"].tolist())
    cfg._world = asdict(data.world_of(tck))   # the students carry the teacher's world (eval.py scores against it)
    tok = data.Tokenizer(tok_bytes, max_len=teacher.cfg.text_len)
    os.makedirs(cfg.out, exist_ok=True)
    name = cfg.method if cfg.stage == "sf" else cfg.stage
    cfg._log = open(os.path.join(cfg.out, f"{name}.log"), "a") if master else None
    if master:
        cfg._log.write(f"config {asdict(cfg)}\n")
        print(f"distill stage {cfg.stage}" + (f", method {cfg.method}" if cfg.stage == "sf" else "") +
              f": {cfg.steps} iterations of {cfg.batch} videos, {world} rank(s), device {device}")
    stage = dict(ode=stage_ode, sf=stage_sf, dprobe=stage_dprobe)[cfg.stage]
    stage(cfg, rank, world, device, teacher, tok, tok_bytes, master)
    M.teardown()


if __name__ == "__main__":
    main(sys.argv[1:])
