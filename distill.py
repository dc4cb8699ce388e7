"""
Distill the teacher into a causal few-step student: ODE init, then Self Forcing with DMD (+ ASD).

    python distill.py                            # the recipe: ODE init (if out/ode.pt is missing), then ASD
    python distill.py --method=dmd               # the baseline: Self Forcing + DMD
    python distill.py --method=ode               # stage 1 only: CausVid ODE init -> out/ode.pt
    python distill.py --init=ckpt/ode_tiny.pt    # stage 2 from the shipped ODE init
    python distill.py --resume=true              # continue exactly after an interruption
    python distill.py --preset=gpu               # one GPU (bf16 autocast), after teacher.py --preset=gpu
    torchrun --standalone --nproc_per_node=2 distill.py    # DDP (nccl on CUDA, gloo on CPU)

The losses follow docs/algorithms.md: ODE init §3 (CausVid), Self Forcing rollout and DMD §4, ASD §6
(Yang et al. 2025, arXiv 2511.01419). Writes {out}/{method}.pt (everything, for --resume) and
{out}/{method}_ema.pt (EMA generator, configs, tokenizer: what sample.py needs). Every random draw
comes from generators seeded by (seed, iteration, rank): a resumed run equals an uninterrupted one.
"""
import hashlib
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
import model as M


@dataclass
class DistillConfig:
    method: str = "asd"             # ode (stage 1 only) | dmd (Self Forcing + DMD) | asd (DMD + ASD)
    teacher: str = "ckpt/teacher_tiny.pt"   # the teacher: real score, fake-score init, student init
    init: str = ""                  # stage 2 starts from this ODE init; empty = {out}/ode.pt (made if missing)
    out: str = "out"                # output folder
    steps: int = 600                # iterations of each stage (ODE regression steps; critic updates)
    batch: int = 8                  # global batch (videos per iteration, all ranks together)
    n_steps: int = 4                # the student's denoising steps N (Self Forcing's warped list)
    ode_pairs: int = 256            # teacher ODE trajectories to regress on (stage 1)
    ode_lr: float = 2e-4            # AdamW lr of the ODE regression (stage 1)
    lr: float = 5e-5                # generator and fake-score lr (stage 2)
    lr_d: float = 1e-3              # discriminator head lr (ASD)
    ratio: int = 5                  # two-time-scale update: one generator update per `ratio` critic updates
    i2v: float = 0.0                # share of iterations whose rollouts start from a given real first frame
    real_cfg: float = 3.0           # CFG scale g of the real score: x0_u + g (x0_c - x0_u)
    ema: float = 0.98               # EMA decay of the generator
    alpha: str = "0.3,0.1,0.1"      # ASD weight per exit step n = 1..N-1 (gradient-norm ratio; one value: all n)
    d_loss: str = "hinge"           # discriminator loss: hinge | rpgan (relativistic)
    d_pair: bool = True             # D's n- and (n+1)-step samples share their noise (paired) or not
    d_sigma_max: float = 0.1        # D's inputs are noised at sigma = shift(U(0.02, d_sigma_max)); 0 = clean
    seed: int = 0                   # prompts, noise, exit steps
    save_every: int = 50            # checkpoint every N iterations (atomic)
    stop_at: int = 0                # stop after this iteration as if interrupted (0 = never)
    resume: bool = False            # continue {out}/{method}.pt
    device: str = "auto"            # auto | cpu | cuda | mps
    compile: bool = False           # torch.compile the networks (slow to compile on CPU: docs/performance.md)


PRESETS = {
    "cpu": dict(),                                                           # the shipped recipe
    "test": dict(steps=2, batch=2, ode_pairs=4),                             # seconds: checks an install
    "tiny64": dict(),                                                        # the recipe (the teacher sets the world)
    "gpu": dict(teacher="out_gpu/teacher_ema.pt", out="out_gpu", batch=32, ode_pairs=2048, steps=2500, ema=0.99),
    "gpu8": dict(teacher="out_gpu8/teacher_ema.pt", out="out_gpu8", batch=128, ode_pairs=16384, steps=3000),
}


# -----------------------------------------------------------------------------
# losses: small pure functions

def dmd_loss(x, teacher, fake, ids_c, ids_u, cfg, g, given=False):
    """DMD (Yin et al. 2023, eq. 7-8; docs/algorithms.md §4.2): noise the student sample, compare the
    real score (teacher, with CFG) and the fake score (trained on student samples) in x0 space.
    grad = (x0_fake - x0_real) / mean|x - x0_real| per sample; the loss 0.5 ||x - sg(x - grad)||^2
    has exactly that gradient (divided by the number of elements). given: frame 0 is clean context."""
    B = x.shape[0]
    u = 0.02 + 0.96 * torch.rand(B, generator=g)
    sigma = M.shift_sigma(u, teacher.cfg.shift)[:, None].repeat(1, x.shape[1]).to(x.device)   # (B, F)
    sigma[:, 0] = 0.0 if given else sigma[:, 0]                  # sigma 0: x0 = x there, no gradient
    with torch.no_grad():
        xt = M.add_noise(x, torch.randn(x.shape, generator=g).to(x.device), sigma)
        text_c, text_u = teacher.encode_text(ids_c), teacher.encode_text(ids_u)
        x0_real = M.guided_x0(teacher, xt, sigma, text_c, text_u, cfg.real_cfg).float()
        x0_fake = M.v_to_x0(xt, fake(xt, sigma, ids_c), sigma).float()
        norm = (x - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
        grad = torch.nan_to_num((x0_fake - x0_real) / norm)
    return 0.5 * F.mse_loss(x, (x - grad).detach())


def fake_score_loss(fake, x, ids, g, given=False):
    """The fake score learns the student's distribution: flow matching on student samples (DMD2).
    given: frame 0 is clean context, as for the teacher (no target there)."""
    u = 0.02 + 0.96 * torch.rand(x.shape[0], generator=g)
    sigma = M.shift_sigma(u, fake.cfg.shift)[:, None].repeat(1, x.shape[1]).to(x.device)
    sigma[:, 0] = 0.0 if given else sigma[:, 0]
    eps = torch.randn(x.shape, generator=g).to(x.device)
    v = fake(M.add_noise(x, eps, sigma), sigma, ids).float()
    return F.mse_loss(v[:, int(given):], (eps - x)[:, int(given):])


# the two discriminator losses (docs/algorithms.md §6.4): hinge (Lim & Ye 2017) and relativistic (R3GAN)
def hinge_d_loss(logit_real, logit_fake):
    return F.relu(1 - logit_real).mean() + F.relu(1 + logit_fake).mean()       # relu(1 - D(r)) + relu(1 + D(f))


def hinge_g_loss(logit_fake):
    return -logit_fake.mean()                                                   # -D(f)


def rpgan_d_loss(logit_real, logit_fake):
    return F.softplus(-(logit_real - logit_fake)).mean()                        # softplus(D(f) - D(r))


def rpgan_g_loss(logit_fake, logit_real):
    return F.softplus(-(logit_fake - logit_real.detach())).mean()               # softplus(D(r) - D(f))


# -----------------------------------------------------------------------------
# the ASD discriminator: the fake score's trunk + a head with one logit per n (docs/algorithms.md §6.3)

class DHead(nn.Module):
    """One learned query token per tapped block cross-attends to that block's hidden states (as in
    Self Forcing's GAN head); the pooled tokens -> MLP -> N-1 logits: logit n-1 is D_n, the critic of
    'n steps vs n+1 steps'. One logit per video, since frame-wise critics miss motion."""

    def __init__(self, dim, heads, taps, n_logits):
        super().__init__()
        self.taps = taps
        self.tokens = nn.Parameter(torch.randn(len(taps), dim) * 0.02)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in taps)
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=True) for _ in taps)
        self.mlp = nn.Sequential(nn.LayerNorm(len(taps) * dim), nn.Linear(len(taps) * dim, dim), nn.SiLU(),
                                 nn.Linear(dim, n_logits))

    def forward(self, feats):
        """feats: every block's hidden states (B, F*N, D) -> logits (B, n_logits)."""
        B, pooled = feats[0].shape[0], []
        for token, i, norm, attn in zip(self.tokens, self.taps, self.norms, self.attn):
            h = norm(feats[i].float())
            pooled.append(attn(token.expand(B, 1, -1), h, h, need_weights=False)[0][:, 0])
        return self.mlp(torch.cat(pooled, dim=-1))


def d_sigma(s, g):
    """The noise level shared by the pair fed to D (the paper's noising process Psi), one per video:
    shift(U(0.02, d_sigma_max)). INFERRED (docs/algorithms.md §6.7): DMD's range drowns the difference
    between n and n+1 steps. d_sigma_max = 0: sigma 0, D sees its inputs clean (results/asd_probes.md)."""
    if s.cfg.d_sigma_max <= 0:
        return torch.zeros(s.micro, s.mc.frames, device=s.device)
    u = 0.02 + (s.cfg.d_sigma_max - 0.02) * torch.rand(s.micro, generator=g)
    return M.shift_sigma(u, s.mc.shift)[:, None].expand(-1, s.mc.frames).to(s.device)


def d_logits(fake, head, x, sigma, eps, ids, n):
    """D_n(Psi(x)): noise x to sigma, run the fake-score trunk, read logit n-1 of the head -> (B,)."""
    with M.autocast(x.device):
        _, feats = fake(M.add_noise(x, eps, sigma), sigma, ids, features=True)
        return head(feats)[:, n - 1].float()


def asd_weight(cfg, n):
    """alpha_n: the n-th entry of --alpha (or its only entry)."""
    alphas = [float(a) for a in cfg.alpha.split(",")]
    return alphas[0] if len(alphas) == 1 else alphas[n - 1]


# -----------------------------------------------------------------------------
# helpers

def open_log(cfg, name, master):
    """{out}/{name}.log on rank 0 (the resolved config first, then one line per step), else None."""
    if master:
        log = open(os.path.join(cfg.out, f"{name}.log"), "a")
        print(f"config {asdict(cfg)}", file=log, flush=True)
        return log


def captions(seed, indices):
    """World captions number `indices` of a seed stream (training split: held-out triples never
    appear). Distillation is data-free: only captions are used."""
    return [data.make_clip(list(seed) + [i], data.WorldConfig(frames=1))[1] for i in indices]


def step_optimizer(params, opt, s, name, loss=None, clip=10.0):
    """(Backward,) average the gradients over ranks, clip (10: Self Forcing's), stop on a non-finite
    gradient, step. The averaging replaces DDP: a rollout calls the generator many times per backward,
    which DDP's one-forward-one-backward bookkeeping does not allow."""
    if loss is not None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
    params = [p for p in params if p.grad is not None]
    for p in params if s.world > 1 else []:
        torch.distributed.all_reduce(p.grad)
        p.grad /= s.world
    M.check_finite(torch.nn.utils.clip_grad_norm_(params, clip), f"{name} gradient", s.it, s.ck_path)
    opt.step()
    opt.zero_grad(set_to_none=True)


# -----------------------------------------------------------------------------
# stage 1: ODE init (CausVid; docs/algorithms.md §3)

def ode_pairs(cfg, teacher, tok, device, master, sigmas):
    """Teacher ODE trajectories on a grid that holds every student sigma: x at each sigma and x0.
    Cached in {out}, keyed by everything that makes them (teacher weights, CFG, seed, N, pairs, Euler)."""
    with open(cfg.teacher, "rb") as f:
        key = hashlib.sha1(f.read())
    key.update(f"{cfg.real_cfg}|{cfg.seed}|{cfg.n_steps}|{cfg.ode_pairs}".encode())
    path = os.path.join(cfg.out, f"ode_pairs_{key.hexdigest()[:12]}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    mc, fwd, chunk = teacher.cfg, M.compile_sampler(teacher) if cfg.compile else teacher, 16
    states, x0s, ids_all = [], [], []
    for i in tqdm(range(0, cfg.ode_pairs, chunk), desc="teacher ODE trajectories", disable=not master):
        n = min(chunk, cfg.ode_pairs - i)
        ids = tok.encode(captions([cfg.seed, 1], range(i, i + n))).to(device)
        g = torch.Generator().manual_seed(cfg.seed * 7919 + i)
        noise = torch.randn((n, mc.frames, mc.channels, mc.size, mc.size), generator=g).to(device)
        text, empty = teacher.encode_text(ids), teacher.encode_text(tok.encode([""] * n).to(device))
        with M.autocast(device):
            x0, kept = M.euler_sample(fwd, noise, text, empty, 4 * cfg.n_steps, cfg.real_cfg, sigmas)
        states.append(torch.stack([kept[s] for s in sigmas], 1).float().cpu())    # (n, N, F, C, H, W)
        x0s.append(x0.float().cpu())
        ids_all.append(ids.cpu())
    pairs = torch.cat(states), torch.cat(x0s), torch.cat(ids_all)
    if master:
        M.save_checkpoint(pairs, path)
    return pairs


def stage_ode(cfg, rank, world, device, teacher, tok, common, master):
    log = open_log(cfg, "ode", master)
    mc = M.ModelConfig(**{**asdict(teacher.cfg), "causal": True})
    student = M.DiT(mc).to(device)
    student.load_state_dict(teacher.state_dict())                     # initialised from the teacher
    sigmas = M.few_step_sigmas(cfg.n_steps, mc.shift)                  # the student's exact timesteps
    path = os.path.join(cfg.out, "ode.pt")
    states, x0s, ids_all = ode_pairs(cfg, teacher, tok, device, master, sigmas)
    fwd = M.compile_sampler(student) if cfg.compile else student
    s = SimpleNamespace(world=world, it=0, ck_path=None)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.ode_lr, betas=(0.9, 0.999), weight_decay=0.0)
    micro, nb, fpb = cfg.batch // world, mc.frames // mc.frames_per_block, mc.frames_per_block
    mine = slice(rank * micro, (rank + 1) * micro)
    states_clean = torch.cat([states, x0s[:, None]], 1)                            # (P, N+1, F, C, H, W)
    sig_all = torch.tensor(sigmas + [0.0])
    t_start = time.perf_counter()
    for it in tqdm(range(cfg.steps), disable=not master, desc="ODE regression"):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)
        idx = torch.randint(0, len(x0s), (cfg.batch,), generator=g)[mine]
        # per block, a random stored state, the same for every frame of the block; index N = clean
        j = torch.randint(0, cfg.n_steps + 1, (cfg.batch, nb), generator=g)[mine].repeat_interleave(fpb, 1)
        x = states_clean[idx[:, None], j, torch.arange(mc.frames)[None]].to(device)  # (B, F, C, H, W)
        sigma = sig_all[j].to(device)                                                 # (B, F)
        with M.autocast(device):
            x0_hat = M.v_to_x0(x, fwd(x, sigma, ids_all[idx].to(device)), sigma)
        noisy = (sigma > 0)[..., None, None, None].float()                            # clean frames: no loss
        err = ((x0_hat.float() - x0s[idx].to(device)) ** 2) * noisy
        loss = err.sum() / (noisy.sum() * x[0, 0].numel()).clamp_min(1)
        s.it = it + 1
        step_optimizer(student.parameters(), opt, s, "student", loss, clip=1.0)
        if master:
            print(f"step {it + 1} | loss_ode {loss.item():.4f} | {(time.perf_counter() - t0) * 1e3:.0f} ms",
                  file=log, flush=True)
    if master:
        M.save_checkpoint(dict(kind="student", ema=student.state_dict(), model=student.state_dict(),
                               step=cfg.steps, model_cfg=asdict(mc), **common), path)
        minutes = (time.perf_counter() - t_start) / 60
        print(f"ODE regression: {cfg.steps} steps in {minutes:.1f} min", file=log, flush=True)
        print(f"wrote {path} (regression {minutes:.1f} min)")


# -----------------------------------------------------------------------------
# stage 2: Self Forcing rollout + DMD, + ASD (docs/algorithms.md §4, §6)

def build_sf(cfg, world, device, teacher, init):
    """Everything stage 2 trains, in one namespace: generator + EMA (from the ODE init), fake score
    (from the teacher), the ASD head, and their optimizers (Self Forcing: AdamW betas (0, 0.999))."""
    mc = M.ModelConfig(**init["model_cfg"])
    s = SimpleNamespace(cfg=cfg, mc=mc, world=world, device=device, teacher=teacher, N=cfg.n_steps,
                        sigmas=M.few_step_sigmas(cfg.n_steps, mc.shift), micro=cfg.batch // world,
                        nb=mc.frames // mc.frames_per_block, it=0, ck_path=None, first=None)
    s.G = M.build_model(init, "model").to(device)
    s.G_ema = M.build_model(init, "model").to(device).requires_grad_(False)
    s.fake = M.DiT(teacher.cfg).to(device)                  # fake score: a trainable copy of the teacher
    s.fake.load_state_dict(teacher.state_dict())
    s.head = DHead(mc.dim, mc.heads, taps=list(range(mc.depth // 2, mc.depth)), n_logits=s.N - 1).to(device)
    # compiled forwards (attributes pass through); parameters, optimizers and checkpoints stay on the modules
    s.G_fwd, s.fake_fwd, s.teacher = (M.compile_sampler(n) if cfg.compile else n for n in (s.G, s.fake, teacher))
    s.opt_g = torch.optim.AdamW(s.G.parameters(), lr=cfg.lr, betas=(0.0, 0.999), weight_decay=0.01)
    s.opt_f = torch.optim.AdamW(s.fake.parameters(), lr=cfg.lr, betas=(0.0, 0.999), weight_decay=0.01)
    s.opt_d = torch.optim.AdamW(s.head.parameters(), lr=cfg.lr_d, betas=(0.0, 0.99), weight_decay=0.0)
    return s


def video_noise(s, g):
    shape = (s.micro, s.mc.frames, s.mc.channels, s.mc.size, s.mc.size)
    return torch.randn(shape, generator=g).to(s.device)


def student_rollout(s, n, ids, g, grad, noise=None):
    """The student's n-step output: a Self Forcing rollout whose exit is step n for every block."""
    noise = video_noise(s, g) if noise is None else noise
    schedules = M.block_schedules(s.nb, n, sigmas=s.sigmas)
    with M.autocast(s.device):
        return M.rollout(s.G_fwd, noise, ids, schedules, grad=grad, generator=g, first_frame=s.first)


def generator_step(s, n, ids, ids_u, g):
    """Generator update: L_DMD on the n-step rollout, + alpha_n L_ASD when method=asd and n < N.
    The critics are frozen with requires_grad_(False): no gradient lands on their parameters, while
    the input gradient still flows through D back to the rollout, as it must."""
    cfg, stats = s.cfg, dict(n=n)
    s.fake.requires_grad_(False)
    s.head.requires_grad_(False)
    noise = video_noise(s, g)
    x = student_rollout(s, n, ids, g, grad=True, noise=noise)   # graph only through the exit forwards
    xd = x.detach().requires_grad_(True)
    with M.autocast(s.device):
        l_dmd = dmd_loss(xd, s.teacher, s.fake_fwd, ids, ids_u, cfg, g, given=s.first is not None)
    grad_x, = torch.autograd.grad(l_dmd, xd)
    stats.update(loss_dmd=l_dmd.item(), g_dmd=grad_x.norm().item())
    if cfg.method == "asd" and n < s.N:
        # ASD (Yang et al. 2025, Fig. 3): the n-step output should be indistinguishable from the
        # student's own (n+1)-step output (stop-gradient), both noised at one shared level
        sig, eps = d_sigma(s, g), torch.randn(x.shape, generator=g).to(s.device)
        a = d_logits(s.fake_fwd, s.head, xd, sig, eps, ids, n)
        if cfg.d_loss == "hinge":
            l_asd = hinge_g_loss(a)
        else:
            with torch.no_grad():
                x_next = student_rollout(s, n + 1, ids, g, grad=False, noise=noise if cfg.d_pair else None)
                eps_next = eps if cfg.d_pair else torch.randn(x.shape, generator=g).to(s.device)
                b = d_logits(s.fake_fwd, s.head, x_next, sig, eps_next, ids, n)
            l_asd = rpgan_g_loss(a, b)
        grad_asd, = torch.autograd.grad(l_asd, xd)
        # the two gradients live on unrelated scales (DMD's is divided by the number of pixels):
        # alpha_n sets the ratio of their norms at x, as VQGAN's adaptive weight (docs/algorithms.md §6.6)
        weight = asd_weight(cfg, n) * grad_x.norm() / grad_asd.norm().clamp_min(1e-12)
        grad_x = grad_x + weight * grad_asd
        stats.update(loss_asd=l_asd.item(), g_asd=(weight * grad_asd).norm().item())
    x.backward(grad_x)        # = backward of L_DMD + alpha_n L_ASD, one pass through the exits
    step_optimizer(s.G.parameters(), s.opt_g, s, "generator")
    s.fake.requires_grad_(True)
    s.head.requires_grad_(True)
    with torch.no_grad():
        for pe, p in zip(s.G_ema.parameters(), s.G.parameters()):
            pe.lerp_(p, 1 - cfg.ema)
    return stats


def fake_step(s, x, ids, g):
    """Fake-score update on fresh no-grad student samples x (DMD2 / Self Forcing critic)."""
    with M.autocast(s.device):
        loss = fake_score_loss(s.fake_fwd, x, ids, g, given=s.first is not None)
    step_optimizer(s.fake.parameters(), s.opt_f, s, "fake score", loss)
    return dict(loss_fake=loss.item())


def discriminator_step(s, n, x_n, x_n1, ids, g):
    """ASD discriminator update, head only: the fake-score trunk runs without grad (docs/algorithms.md
    §6.3). 'real' = the (n+1)-step output x_n1, 'fake' = the n-step output x_n, both no-grad rollouts,
    noised with one sigma and one noise draw, in one batched pass."""
    sig, eps = d_sigma(s, g), torch.randn(x_n.shape, generator=g).to(s.device)
    both = M.add_noise(torch.cat([x_n, x_n1]), torch.cat([eps, eps]), torch.cat([sig, sig]))
    with torch.no_grad(), M.autocast(s.device):
        feats = s.fake_fwd(both, torch.cat([sig, sig]), torch.cat([ids, ids]), features=True)[1]
    feats_fake, feats_real = zip(*(f.chunk(2) for f in feats))                # per block: (B, F*N, D)
    with M.autocast(s.device):
        fake, real = (s.head(f)[:, n - 1].float() for f in (feats_fake, feats_real))
    loss = hinge_d_loss(real, fake) if s.cfg.d_loss == "hinge" else rpgan_d_loss(real, fake)
    step_optimizer(s.head.parameters(), s.opt_d, s, "discriminator", loss)
    return dict(loss_d=loss.item(), d_real=real.mean().item(), d_fake=fake.mean().item())


def stage_sf(cfg, rank, world, device, teacher, tok, common, master):
    log = open_log(cfg, cfg.method, master)
    s = build_sf(cfg, world, device, teacher, M.load_checkpoint(cfg.init, "student"))
    s.ck_path = ck_path = os.path.join(cfg.out, f"{cfg.method}.pt")
    ema_path = os.path.join(cfg.out, f"{cfg.method}_ema.pt")
    trained, start = ("G", "G_ema", "fake", "head", "opt_g", "opt_f", "opt_d"), 0   # what --resume restores
    if cfg.resume:
        ck = M.load_checkpoint(ck_path, "student-train")
        M.check_same_config(ck["model_cfg"], s.mc, ck_path)
        for key in trained:
            getattr(s, key).load_state_dict(ck[key])
        start = ck["step"]
        torch.set_rng_state(ck["rng"])

    def save(it):
        nets = {k: getattr(s, k).state_dict() for k in trained}
        state = dict(step=it, model_cfg=asdict(s.mc), **common)
        M.save_checkpoint(dict(kind="student-train", rng=torch.get_rng_state(), **nets, **state), ck_path)
        M.save_checkpoint(dict(kind="student", ema=s.G_ema.state_dict(), **state), ema_path)

    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not master, dynamic_ncols=True,
               desc=f"Self Forcing + {cfg.method.upper()}")
    t_start = time.perf_counter()
    for it in bar:
        t0, s.it = time.perf_counter(), it + 1
        g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + it) * 64 + rank)   # this rank's draws
        rnd = random.Random(cfg.seed * 1_000_003 + it)                              # draws shared by ranks
        caps = captions([cfg.seed, 7, it], range(rank * s.micro, (rank + 1) * s.micro))      # this rank's
        ids, ids_u = tok.encode(caps).to(device), tok.encode([""] * s.micro).to(device)
        s.first = None      # image-to-video iterations: the first frame of the captions' own world clips
        if random.Random(f"i2v {cfg.seed} {it}").random() < cfg.i2v:
            seeds = [[cfg.seed, 7, it, i] for i in range(rank * s.micro, (rank + 1) * s.micro)]
            s.first = data.make_batch(seeds, data.WorldConfig(**common["world"]), device=device)[0][:, 0]
        # the exit step n changes the graph, so every rank must agree: drawn on rank 0, broadcast
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
                x_n1 = student_rollout(s, n + 1, ids, g, grad=False, noise=noise if cfg.d_pair else None)
            stats.update(discriminator_step(s, n, x_n, x_n1, ids, g))
        if master:
            line = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
            print(f"step {it + 1} | {line} | {(time.perf_counter() - t0) * 1e3:.0f} ms", file=log, flush=True)
            bar.set_postfix_str(f"fake {stats['loss_fake']:.3g}")
            if (it + 1) % cfg.save_every == 0 or it + 1 == end:
                save(it + 1)
    if master:
        bar.close()
        minutes = (time.perf_counter() - t_start) / 60
        print(f"trained iterations {start}-{end} in {minutes:.1f} min", file=log, flush=True)
        print(f"wrote {ck_path} and {ema_path} at iteration {end} ({minutes:.1f} min)")


def main(argv):
    cfg = M.parse_args(DistillConfig(), argv, PRESETS, __doc__)
    if cfg.method not in ("ode", "dmd", "asd") or cfg.d_loss not in ("hinge", "rpgan"):
        sys.exit("error: --method must be ode|dmd|asd and --d_loss hinge|rpgan")
    if len(cfg.alpha.split(",")) not in (1, cfg.n_steps - 1):
        sys.exit(f"error: --alpha needs 1 or n_steps - 1 = {cfg.n_steps - 1} comma-separated weights")
    rank, world, device = M.setup(cfg.device, cfg.seed)
    if cfg.batch % world:
        sys.exit(f"error: --batch={cfg.batch} is not divisible by {world} ranks")
    master = rank == 0
    tck = M.load_checkpoint(cfg.teacher, "teacher")
    teacher = M.build_model(tck).to(device).requires_grad_(False)     # the real score: frozen
    tok_bytes = bytes(tck["tokenizer"].tolist())
    tok = data.Tokenizer(tok_bytes, max_len=teacher.cfg.text_len)
    # what every student checkpoint carries: its recipe, its teacher's world (eval.py scores against it)
    common = dict(train_cfg=asdict(cfg), world=tck["world"],
                  tokenizer=torch.tensor(list(tok_bytes), dtype=torch.uint8))
    if master:
        os.makedirs(cfg.out, exist_ok=True)
        print(f"distill, method {cfg.method}: {cfg.steps} iterations of {cfg.batch} videos, "
              f"{world} rank(s), device {device}")
    made_init = os.path.join(cfg.out, "ode.pt")
    if cfg.method == "ode" or (not cfg.init and not os.path.exists(made_init)):
        stage_ode(cfg, rank, world, device, teacher, tok, common, master)
    if cfg.method != "ode":
        cfg.init = cfg.init or made_init
        stage_sf(cfg, rank, world, device, teacher, tok, common, master)
    M.teardown()


if __name__ == "__main__":
    main(sys.argv[1:])
