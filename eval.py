"""
Eval: the scorecard. A VBench-shaped table of quality and semantic dimensions measured against the
procedural world's ground truth, FVD-synth, per-frame error curves and the step-to-step x0 similarity.

    python eval.py --ckpt=ckpt/asd_tiny.pt --steps=1       # a student at 1* steps -> out/eval/asd_tiny_1star.json
    python eval.py --ckpt=ckpt/asd_tiny.pt --steps=2 --ffe=false
    python eval.py --ckpt=ckpt/teacher_tiny.pt --steps=16  # the teacher: Euler steps with CFG 3
    python eval.py --compare=out/eval/dmd_tiny_1.json,out/eval/asd_tiny_1.json   # paired CIs of b - a
    python eval.py --table=a.json,b.json,...               # the README's results table
    python eval.py --diagnose=ckpt/teacher_tiny.pt         # does the teacher read each caption word?
    python eval.py --train=true                            # train + gate the evaluator nets -> ckpt/evaluator.pt

The design: docs/algorithms.md §8. Every model is sampled on the same prompts and noise seeds: a
balanced single-object grid (colour x shape x direction x background, the held-out triples apart)
cycled to --n videos. Each dimension is normalised VBench-style, with real clips = 1 and one fixed
degraded anchor = 0 (ANCHOR below); Total = (4 Quality + Semantic) / 5. These are our own numbers on
our own world: never call them VBench scores or compare them with published FVD.
Evaluation runs on the CPU; only sampling uses --device.
"""
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
import model as M
import sample
import teacher


@dataclass
class EvalConfig:
    ckpt: str = ""                  # student (causal) or teacher checkpoint to score
    steps: int = 1                  # denoising steps per block (student) or Euler steps (teacher)
    ffe: bool = True                # student: First-Frame Enhancement, block 0 gets first_steps
    first_steps: int = 4            # student: steps of the first block with FFE
    cfg: float = 3.0                # teacher: classifier-free guidance scale
    n: int = 264                    # videos per model; 264 = twice the 132 training captions (balanced)
    n_heldout: int = 48             # videos on the held-out colour x shape x direction triples
    sim_n: int = 32                 # student: prompts for the step-to-step x0 similarity matrices
    seed: int = 0                   # prompts, world and noise seed: keep it fixed across models
    batch: int = 64                 # videos per sampling call (fixed: the re-noising draws depend on it)
    boot: int = 1000                # bootstrap resamples of the paired CIs
    boot_fd: int = 20               # bootstrap resamples of the FVD-synth SD
    evaluator: str = "ckpt/evaluator.pt"   # the evaluator nets (made by --train=true)
    out: str = "out/eval"           # folder of the JSON results
    name: str = ""                  # JSON name; empty = checkpoint name + step label
    compare: str = ""               # a.json,b.json: print paired-bootstrap CIs of b - a and exit
    table: str = ""                 # a.json,b.json,...: print the README's results table and exit
    long: int = 0                   # student: also stream this many frames (rolling KV window), per-frame curves
    i2v: bool = False               # image-to-video: each video starts from its real clip's first frame
    switch: int = 0                 # student: the prompt-switch study instead, captions switched at this frame
    switch_frames: int = 32         # --switch: frames per streamed video
    plot: str = ""                  # a.json,b.json,...: per-frame curves + similarity matrices -> --plot_dir
    diagnose: str = ""              # a teacher checkpoint: print how its loss and motion follow each caption word
    plot_dir: str = "assets"        # where --plot writes per_frame.png and similarity.png (needs matplotlib)
    train: bool = False             # train and gate the evaluator nets, save them to --evaluator
    train_steps: int = 800          # --train: optimizer steps, fresh clips every step
    size: int = 32                  # --train: frame size the evaluator learns (must match the model's)
    frames: int = 8                 # --train: frames per clip (must match the model's)
    world_scale: float = 1.0        # --train: the world's object scale (must match the model's world)
    device: str = "auto"            # sampling device: auto | cpu | cuda | mps


PRESETS = {
    "cpu": dict(),                                                           # the README's scorecards
    "test": dict(n=4, n_heldout=4, sim_n=2, boot=100, boot_fd=2),            # seconds: checks an install
    "gpu": dict(),                                                           # the same scorecards, sampled on GPU
    "tiny64": dict(size=64, world_scale=2.0, train_steps=1600),              # --train: tiny64's world
}

# VBench's layout (docs/algorithms.md §8.2-8.3): quality weights (dynamic degree counts half),
# the anchor that defines 0 for each quality dimension, and chance level as 0 for the semantic ones.
QUALITY = {"subject_consistency": 1.0, "background_consistency": 1.0, "background_flicker": 1.0,
           "smoothness": 1.0, "dynamic_degree": 0.5, "colour_fidelity": 1.0, "cleanliness": 1.0}
ANCHOR = {"subject_consistency": "mix", "background_consistency": "mix", "background_flicker": "noise",
          "smoothness": "shuffle", "dynamic_degree": "freeze", "colour_fidelity": "washout",
          "cleanliness": "noise"}
CHANCE = {"shape": 1 / 3, "colour": 1 / 6, "direction": 1 / 4, "joint": 1 / 72}
SEMANTIC = list(CHANCE)
# each dimension's weight in the Total = (4 Quality + Semantic) / 5 (what `--compare` splits a difference by)
TOTAL_WEIGHT = {**{d: 0.8 * w / sum(QUALITY.values()) for d, w in QUALITY.items()},
                **{d: 0.2 / len(SEMANTIC) for d in SEMANTIC}}
# accuracy gates on fresh real clips before an evaluator may score (the clip net's shape head is only
# reported: the shape dimension is scored by the frame net)
GATES = {"frame_shape": 0.95, "frame_colour": 0.98, "clip_colour": 0.98, "clip_direction": 0.98}
COLOURS, SHAPES, DIRECTIONS = list(data.COLOURS), data.SHAPES, list(data.DIRECTIONS)


# -----------------------------------------------------------------------------
# the fixed prompts: the same captions, world clips and noise seeds for every model

def prompt_grid(n, split="train", seed=0, reps=2):
    """n single-object prompts cycling through a fixed shuffle of the caption grid (exactly balanced
    when n is a multiple of it: 132 training captions, 12 held-out). Each prompt carries `reps` world
    seeds whose clip has exactly its caption (real set 0 = the FD reference, 1 = the ceiling)."""
    keep = lambda c, s, d: ((c, s, d) in data.HELD_OUT) == (split == "heldout")
    combos = [(c, s, d, b) for c in COLOURS for s in SHAPES for d in DIRECTIONS for b in data.BACKGROUNDS
              if keep(c, s, d)]
    order = np.random.default_rng(seed).permutation(len(combos))
    need = reps * -(-n // len(combos))
    found, j = {k: [] for k in combos}, 0
    while min(map(len, found.values())) < need:   # the factors are drawn before any pixel, so frames=1 is cheap
        seed_j = [seed, 11, j]
        _, caption, f, _ = data.make_clip(seed_j, data.WorldConfig(frames=1, p_two=0), split)
        key = (f["colours"][0], f["shapes"][0], f["directions"][0], f["background"])
        if len(found[key]) < need:
            found[key].append((seed_j, caption))
        j += 1
    out = []
    for i in range(n):
        key, r = combos[order[i % len(combos)]], i // len(combos)
        seeds = found[key][r * reps:(r + 1) * reps]
        noise = int(np.random.SeedSequence([seed, 12, i, split == "heldout"]).generate_state(1)[0])
        out.append(dict(caption=seeds[0][1], colour=key[0], shape=key[1], direction=key[2], background=key[3],
                        world=[s for s, _ in seeds], noise=noise, split=split))
    return out


def real_videos(prompts, size, frames, which=0, world=data.WorldConfig(), centres=False):
    """The world's clips for the prompts (N, F, 3, H, W): which=0 the FD reference, 1 the ceiling;
    world: the one the model learned from (data.world_of). centres=True: also the object's (N, F, 2)."""
    cfg = replace(world, size=size, frames=frames, p_two=0)
    split = prompts[0]["split"]                                    # every prompt grid is of one split
    videos, _, _, tracks = data.make_batch([p["world"][which] for p in prompts], cfg, split)
    return (videos, torch.from_numpy(np.stack([c[:, 0] for c in tracks]))) if centres else videos


# -----------------------------------------------------------------------------
# sampling a checkpoint (through sample.generate) and the step-to-step x0 similarity (paper Fig. 2)

def noise_for(prompts, mc, frames=0):
    """Each video's noise from its own seed: a video never depends on the batch it is sampled in."""
    shape = (frames or mc.frames, mc.channels, mc.size, mc.size)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(p["noise"])) for p in prompts])


def sample_checkpoint(ck, prompts, steps=1, ffe=True, first_steps=4, cfg_scale=3.0, batch=64, device="cpu",
                      frames=0, first_frames=None, switch=None):
    """Sample a student (steps per block, FFE: block 0 gets first_steps) or a teacher (Euler steps, CFG)
    on the prompts. Returns (videos (N, F, C, H, W) on the CPU, label such as '1*', '2', 'teacher32').
    frames > the trained length: a student streams with the rolling KV window. first_frames (N, C, H, W):
    image-to-video. switch (frame, captions (N,), recache): a prompt switch (sample.py --switch)."""
    net, tok, n_max = sample.load(ck, device)
    mc, out = net.cfg, []
    first = first_steps if mc.causal and ffe and first_steps > steps else 0
    if mc.causal and max(steps, first) > n_max:
        raise ValueError(f"this student was trained for at most {n_max} steps per block")
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        noise = noise_for(chunk, mc, frames).to(device)
        ids = tok.encode([p["caption"] for p in chunk]).to(device)
        ids_u = tok.encode([""] * len(chunk)).to(device)
        g = torch.Generator().manual_seed(chunk[0]["noise"])            # re-noising draws of the chain
        image = None if first_frames is None else first_frames[i:i + batch].to(device)
        sw = None if switch is None else (switch[0], tok.encode(switch[1][i:i + batch]).to(device), switch[2])
        out.append(sample.generate(net, ids, ids_u, noise, steps, first, n_max, cfg_scale, g, first_frame=image,
                                   switch=sw).cpu())
    return torch.cat(out).clamp(-1, 1), sample.label(mc.causal, steps, first)


def cosine_matrix(z):
    """z (..., K, D) -> (..., K, K) cosine similarity between the K rows."""
    z = F.normalize(z.double(), dim=-1)
    return z @ z.transpose(-1, -2)


@torch.no_grad()
def step_similarity(ck, prompts, device="cpu"):
    """The paper's Figure 2: every block denoised through the full n_max-step chain; the cosine similarity
    of the flattened x0 predictions after step j and step k, averaged over prompts. Returns
    (per block (n_blocks, K, K), per frame (F, K, K)) as numpy arrays."""
    net, tok, n_max = sample.load(ck, device)
    mc = net.cfg
    sched = M.block_schedules(mc.frames // mc.frames_per_block, n_max, 0, M.few_step_sigmas(n_max, mc.shift))
    noise, ids = noise_for(prompts, mc).to(device), tok.encode([p["caption"] for p in prompts]).to(device)
    g = torch.Generator().manual_seed(prompts[0]["noise"])
    _, steps = M.rollout(net, noise, ids, sched, generator=g, trace=True)
    x = torch.stack([torch.stack(s, 1) for s in steps], 1).cpu()        # (B, blocks, K, fpb, C, H, W)
    blocks = cosine_matrix(x.flatten(3)).mean(0)                          # (blocks, K, K)
    frames = cosine_matrix(x.transpose(2, 3).flatten(4)).mean(0).flatten(0, 1)   # (blocks*fpb = F, K, K)
    return blocks.numpy(), frames.numpy()


# -----------------------------------------------------------------------------
# evaluator nets: trained on the world's labels only (never on model samples, never a discriminator)

CROP = 24   # FrameNet's object-centred crop (px): the largest object (a radius-7 triangle) plus a margin


def with_coords(x):
    """Append x, y coordinate channels in [-1, 1] to (B, C, ..., H, W): position (and so the walls a
    bouncing object turns at) survives the global pooling."""
    H, W = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    grid = torch.stack([xx, yy]).view(1, 2, *([1] * (x.dim() - 4)), H, W)
    return torch.cat([x, grid.expand(x.shape[0], 2, *x.shape[2:-2], H, W)], dim=1)


def crops(frames, centres, scale=1.0):
    """c x c windows (B, C, c, c), c = CROP * world scale, of frames (B, C, H, W) around tracked centres
    (B, 2), edges replicated. Taking the translation out makes shape a small problem: on whole 32 px frames the
    nets stalled near 0.7 shape accuracy (docs/algorithms.md §8.5)."""
    H, W, c = *frames.shape[-2:], round(CROP * scale)
    off = torch.arange(c) - c // 2
    rows = (centres[:, 1].floor().long()[:, None] + off).clamp(0, H - 1)        # (B, c)
    cols = (centres[:, 0].floor().long()[:, None] + off).clamp(0, W - 1)
    b = torch.arange(len(frames))[:, None, None]
    return frames.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def frame_net():
    """2-D per-frame net on the object crop: 64-d embedding, heads for shape, colour and the offset of
    the object's true centre from the tracked one (position = tracker + offset)."""
    conv = lambda i, o, s: [nn.Conv2d(i, o, 3, s, 1), nn.BatchNorm2d(o), nn.GELU()]   # BN: trains in minutes
    trunk = nn.Sequential(*conv(5, 16, 1), *conv(16, 32, 2), *conv(32, 64, 2), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(64, 64), nn.GELU())
    return nn.ModuleDict(dict(trunk=trunk, shape=nn.Linear(64, 3), colour=nn.Linear(64, 6), pos=nn.Linear(64, 2)))


def clip_net(frames):
    """3-D clip net (docs/algorithms.md §8.5) on whole clips: 128-d features (FVD-synth), heads for
    shape, colour, direction, speed, and each frame's object centre. Pooling is spatial only and the
    per-frame centre head forces every time slice to know where the object is: direction (the first
    motion of a clip that may bounce) is then a readout of the frame order, learnt in minutes."""
    conv = lambda i, o, kt: [nn.Conv3d(i, o, (kt, 3, 3), (1, 2, 2), (kt // 2, 1, 1)), nn.BatchNorm3d(o),
                             nn.GELU()]
    body = nn.Sequential(*conv(5, 16, 1), *conv(16, 32, 3), *conv(32, 64, 3), nn.AdaptiveAvgPool3d((None, 1, 1)))
    return nn.ModuleDict(dict(body=body, fc=nn.Sequential(nn.Linear(64 * frames, 128), nn.GELU()),
                              shape=nn.Linear(128, 3), colour=nn.Linear(128, 6), direction=nn.Linear(128, 4),
                              speed=nn.Linear(128, 1), track=nn.Linear(64, 2)))


def clip_forward(net, videos):
    """(N, F, C, H, W) -> (128-d clip features (N, 128), per-frame features (N, F, 64))."""
    h = net["body"](with_coords(videos.transpose(1, 2))).flatten(2).transpose(1, 2)   # (N, F, 64)
    return net["fc"](h.flatten(1)), h


# the evaluator nets learn the bouncing world with a wider speed range: it holds every model's world
EVAL_WORLD = dict(p_two=0, speed=(1.0, 1.6), wall_free=0, centred=False)


def world_batch(seed, n, size, frames, scale=1.0):
    """n fresh single-object clips of every caption (held-out triples included) and their labels."""
    cfg = data.WorldConfig(size=size, frames=frames, scale=scale, **EVAL_WORLD)
    videos, _, factors, tracks = data.make_batch([list(seed) + [i] for i in range(n)], cfg, "all")
    centres = torch.from_numpy(np.stack([c[:, 0] for c in tracks]))                  # (n, F, 2) pixels
    label = lambda names, key: torch.tensor([names.index(f[key][0]) for f in factors])
    return videos, dict(
        shape=label(SHAPES, "shapes"), colour=label(COLOURS, "colours"),
        direction=label(DIRECTIONS, "directions"), speed=centres.diff(dim=1).norm(dim=-1).median(1).values,
        centres=centres)


def frame_outputs(ev, videos, centres, chunk=1024):
    """videos (N, F, C, H, W), tracked centres (N, F, 2) -> embedding (N, F, 64), shape logits (N, F, 3),
    colour logits (N, F, 6), position (N, F, 2) pixels."""
    x, c, outs = videos.flatten(0, 1), centres.flatten(0, 1), []
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            h = ev["frame"]["trunk"](with_coords(crops(x[i:i + chunk], c[i:i + chunk], ev["scale"])))
            pos = c[i:i + chunk] + ev["frame"]["pos"](h)
            outs.append((h, ev["frame"]["shape"](h), ev["frame"]["colour"](h), pos))
    return [torch.cat(o).unflatten(0, videos.shape[:2]) for o in zip(*outs)]


def train_evaluator(size=32, frames=8, steps=800, batch=32, seed=0, progress=False, scale=1.0):
    """Train both nets jointly on fresh clips every step (a fixed set overfits: docs/algorithms.md §8.5), with
    light pixel noise so slightly noisy samples stay in distribution. Returns the evaluator dict."""
    torch.manual_seed(seed)
    fnet, cnet = frame_net(), clip_net(frames)
    opt = torch.optim.AdamW(list(fnet.parameters()) + list(cnet.parameters()), lr=3e-3, weight_decay=1e-4)
    lr_at = lambda s: min(1, (s + 1) / 50) * 0.5 * (1 + np.cos(np.pi * s / steps))   # warm-up, cosine to 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ce, rows = F.cross_entropy, torch.arange(batch)[:, None]
    for step in tqdm(range(steps), desc="evaluator", disable=not progress):
        x, y = world_batch([seed, 5, step], batch, size, frames, scale)
        x = x + 0.05 * torch.rand(batch, 1, 1, 1, 1) * torch.randn_like(x)
        _, tracked, _ = track(x)
        k = torch.randint(0, frames, (batch, 2))                                  # 2 frames per clip for FrameNet
        h = fnet["trunk"](with_coords(crops(x[rows, k].flatten(0, 1), tracked[rows, k].flatten(0, 1), scale)))
        rep = lambda t: t.repeat_interleave(2, 0)
        offset = (y["centres"] - tracked)[rows, k].flatten(0, 1)
        loss = ce(fnet["shape"](h), rep(y["shape"])) + ce(fnet["colour"](h), rep(y["colour"])) + \
            F.mse_loss(fnet["pos"](h), offset)
        z, hf = clip_forward(cnet, x)
        loss = loss + ce(cnet["shape"](z), y["shape"]) + ce(cnet["colour"](z), y["colour"]) + \
            ce(cnet["direction"](z), y["direction"]) + F.mse_loss(cnet["speed"](z)[:, 0], y["speed"]) + \
            10 * F.mse_loss(cnet["track"](hf), y["centres"] / size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return dict(frame=fnet.eval(), clip=cnet.eval(), size=size, frames=frames, scale=scale)


def gate_accuracies(ev, n=512, seed=0):
    """Accuracies on fresh clips from a seed stream training never draws (the gate before use)."""
    x, y = world_batch([seed, 9], n, ev["size"], ev["frames"], ev["scale"])
    _, centres, _ = track(x)
    _, shape, colour, pos = frame_outputs(ev, x, centres)
    with torch.no_grad():
        z, _ = clip_forward(ev["clip"], x)
    acc = lambda logits, target: (logits.argmax(-1) == target).float().mean().item()
    return dict(frame_shape=acc(shape, y["shape"][:, None]), frame_colour=acc(colour, y["colour"][:, None]),
                clip_shape=acc(ev["clip"]["shape"](z), y["shape"]),
                clip_colour=acc(ev["clip"]["colour"](z), y["colour"]),
                clip_direction=acc(ev["clip"]["direction"](z), y["direction"]),
                tracker_direction=(tracker_direction(centres) == y["direction"]).float().mean().item(),
                frame_pos_err_px=(pos - y["centres"]).norm(dim=-1).mean().item(),
                tracker_pos_err_px=(centres - y["centres"]).norm(dim=-1).mean().item())


def load_evaluator(path):
    """The saved evaluator nets. FileNotFoundError (naming the command that makes them) when missing,
    ValueError when they failed their accuracy gates."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"evaluator {path} not found; train it with: "
                                f"python eval.py --train=true --evaluator={path}")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    failed = [f"{k} {ck['gates'][k]:.3f} < {g}" for k, g in GATES.items() if ck["gates"][k] < g]
    if failed:
        raise ValueError(f"evaluator {path} failed its accuracy gates ({', '.join(failed)}); "
                         "retrain with more --train_steps")
    fnet, cnet = frame_net(), clip_net(ck["frames"])
    fnet.load_state_dict(ck["frame"])
    cnet.load_state_dict(ck["clip"])
    return dict(frame=fnet.eval(), clip=cnet.eval(), size=ck["size"], frames=ck["frames"],
                scale=ck.get("scale", 1.0), gates=ck["gates"])


# -----------------------------------------------------------------------------
# analytic tracker and pixel metrics (work in [0, 1] units, like VBench's 8-bit formulas / 255)

def track(videos, thresh=0.25):
    """Object mask = pixels whose colour differs from the frame's border median by more than thresh
    (L-inf); centroid from the mask (an empty frame gives the frame centre, so a vanishing object shows
    as a jump). Returns mask (N, F, H, W), centres (N, F, 2) in pixels (x, y), background colour (N, F, C)."""
    u = (videos.clamp(-1, 1) + 1) / 2
    border = torch.cat([u[..., 0, :], u[..., -1, :], u[..., 1:-1, 0], u[..., 1:-1, -1]], dim=-1)
    bg = border.median(dim=-1).values                                              # (N, F, C)
    mask = (u - bg[..., None, None]).abs().amax(2) > thresh                       # (N, F, H, W)
    H, W = mask.shape[-2:]
    centres, area = centroids(mask)
    centres = torch.where((area > 0)[..., None], centres, torch.tensor([W / 2, H / 2]))
    return mask, centres, bg


def centroids(mask):
    """Masks (..., H, W) -> centroids (..., 2) in pixels (x, y), 0 for an empty mask, and areas (...)."""
    m = mask.float()
    H, W = m.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    area = m.sum((-1, -2))
    return torch.stack([(m * xx).sum((-1, -2)), (m * yy).sum((-1, -2))], -1) / area.clamp_min(1)[..., None], area


def tracker_direction(centres):
    """Direction index (data.DIRECTIONS order) from a track: the dominant axis of motion and the sign
    of the first step along it, since a bounce reverses every later step."""
    step = centres.diff(dim=1)                                                    # (N, F-1, 2)
    axis = step.abs().sum(1).argmax(-1)                                           # 0 = x, 1 = y
    first = step[:, 0].gather(-1, axis[:, None])[:, 0]
    return axis * 2 + (first > 0).long()                                          # left, right, up, down


def pool(mask, r, erode=False):
    """Dilate (or erode) boolean masks (..., H, W) by r pixels."""
    m = mask.float().flatten(0, -3)[:, None]
    m = -F.max_pool2d(-m, 2 * r + 1, 1, r) if erode else F.max_pool2d(m, 2 * r + 1, 1, r)
    return m[:, 0].view(mask.shape) > 0.5


def masked_mean(x, m, dims=(-1, -2)):
    return (x * m).sum(dims) / m.sum(dims).clamp_min(1)


def or_everywhere(m):
    """Masks (..., H, W) with no pixel set become all-True: with no background found, judge the whole
    frame (a frame full of noise must not get a perfect background score for having none)."""
    return m | ~m.flatten(-2).any(-1)[..., None, None]


def majority_ok(logits, target):
    """Per video: 1 where the most frequent per-frame prediction (logits (N, F, K)) equals target (N,)."""
    return (logits.argmax(-1).mode(dim=1).values == target).float()


# -----------------------------------------------------------------------------
# per-video scores: every dimension, one number per video (and per frame where it has a curve)

def score_videos(ev, videos, prompts):
    """Scores of videos (N, F, C, H, W) against their prompts: per-video dimensions (dict of (N,)),
    per-frame curves (dict of (N, F)), clip features (N, 128), frame embeddings (N, F, 64)."""
    N, T, C, H, W = videos.shape
    u = (videos.clamp(-1, 1) + 1) / 2
    mask, centres, bg = track(videos)
    emb, shape_logits, colour_logits, _ = frame_outputs(ev, videos, centres)
    with torch.no_grad():
        z, _ = clip_forward(ev["clip"], videos)
    idx = lambda names, key: torch.tensor([names.index(p[key]) for p in prompts])
    shape, colour, direction = idx(SHAPES, "shape"), idx(COLOURS, "colour"), idx(DIRECTIONS, "direction")
    # subject consistency: VBench's formula on the frame embeddings, mean_t>=1 of (cos to t-1 + cos to 0) / 2
    e = F.normalize(emb, dim=-1)
    cos_prev, cos_first = (e[:, 1:] * e[:, :-1]).sum(-1), (e[:, 1:] * e[:, :1]).sum(-1)
    subject = ((cos_prev.clamp_min(0) + cos_first.clamp_min(0)) / 2).mean(1)
    # background = pixels more than 2 px from the object in both frames compared
    back = ~pool(mask, 2)
    diff = (u[:, 1:] - u[:, :-1]).abs().mean(2)                                  # (N, F-1, H, W)
    flicker = 1 - masked_mean(diff, or_everywhere(back[:, 1:] & back[:, :-1])).mean(1)
    from_first = (u[:, 1:] - u[:, :1]).abs().mean(2)
    bg_consistency = 1 - masked_mean(from_first, or_everywhere(back[:, 1:] & back[:, :1])).mean(1)
    # kinematics from the tracker: acceleration, and VBench's dynamic rule with a step threshold of half
    # the world's slowest speed in at least round(4 F / 16) frame pairs
    step = centres.diff(dim=1).norm(dim=-1)                                      # (N, F-1)
    accel = centres.diff(dim=1).diff(dim=1).norm(dim=-1).mean(1)
    dynamic = ((step > 0.5 * data.WorldConfig.speed[0] * ev["scale"]).sum(1) >= max(1, round(4 * T / 16))).float()
    track_dir = (tracker_direction(centres) == direction).float()
    # colour / exposure fidelity: the object's core colour vs its caption colour, plus the background
    # level vs the caption's background (catches the over-exposure drift of long rollouts)
    core = pool(mask, 1, erode=True)
    core = torch.where(core.any(-1).any(-1)[..., None, None], core, mask)
    obj = masked_mean(u, core[:, :, None])                                       # (N, F, C)
    canon = torch.tensor([data.COLOURS[p["colour"]] for p in prompts])[:, None]
    level = torch.tensor([data.BACKGROUNDS[p["background"]] for p in prompts])[:, None, None]
    colour_err = (obj - canon).abs().mean(-1) + (bg - level).abs().mean(-1)
    colour_err = torch.where(mask.any(-1).any(-1), colour_err, torch.ones(()))  # no object: the worst score
    # cleanliness: edge sharpness (99th-percentile neighbour difference) minus flat-region noise (median
    # |Laplacian| on the background), both relative to the object-background contrast and capped at 1,
    # so one broken frame cannot outweigh the other dimensions
    contrast = (obj - bg).abs().amax(-1).clamp_min(0.1)                          # (N, F)
    corner = u[..., :-1, :-1]
    grad = torch.maximum((u[..., 1:, :-1] - corner).abs(), (u[..., :-1, 1:] - corner).abs()).amax(2)
    sharp = grad.flatten(2).quantile(0.99, dim=-1) / contrast
    lap = F.conv2d(u.flatten(0, 2)[:, None], torch.tensor([[[[0., 1, 0], [1, -4, 1], [0, 1, 0]]]]))
    lap = lap.view(N, T, C, H - 2, W - 2).abs().amax(2)
    noise = torch.where(or_everywhere(back[..., 1:-1, 1:-1]), lap, torch.nan).flatten(2).nanmedian(-1).values
    shape_ok = (shape_logits.argmax(-1) == shape[:, None]).float()              # (N, F)
    colour_ok = (colour_logits.argmax(-1) == colour[:, None]).float()
    # joint caption accuracy: the video's majority shape and colour and its tracked direction all right
    joint = majority_ok(shape_logits, shape) * majority_ok(colour_logits, colour) * track_dir
    video = dict(subject_consistency=subject, background_consistency=bg_consistency, background_flicker=flicker,
                 smoothness=accel, dynamic_degree=dynamic, colour_fidelity=colour_err.mean(1),
                 cleanliness=(sharp.clamp(max=1) - (noise / contrast).clamp(max=1)).mean(1),
                 shape=shape_ok.mean(1), colour=colour_ok.mean(1),
                 direction=track_dir, joint=joint,
                 clip_direction=(ev["clip"]["direction"](z).argmax(-1) == direction).float())
    # curves over t: drift = cos(e_0, e_t) (VBench issue #206's long-horizon view); step = the tracked
    # step into frame t (frame 0 repeats the first), which falls when motion stalls
    frame = dict(shape_acc=shape_ok, colour_acc=colour_ok, colour_err=colour_err, noise=noise,
                 drift=(e * e[:, :1]).sum(-1), step=torch.cat([step[:, :1], step], 1))
    return dict(video=video, frame=frame, clip_feat=z, frame_emb=emb)


# -----------------------------------------------------------------------------
# the scorecard: anchors, normalisation, FVD-synth, curves

def degrade(videos, kind, seed=0):
    """The fixed anchors made from real clips (N, F, C, H, W), and one corruption for the tests:
    noise   i.i.d. per-frame Gaussian noise, sigma 0.1 on a [0, 1] scale
    mix     frame t of video i taken from video i + t (identity and background change every frame)
    shuffle each video's frames in a random order        freeze   the first frame repeated
    washout over-exposed and desaturated: 0.6 x + 0.4    recolour the RGB channels rotated (a wrong colour)"""
    g = torch.Generator().manual_seed(seed)
    N, T = videos.shape[:2]
    if kind == "noise":
        return (videos + 0.2 * torch.randn(videos.shape, generator=g)).clamp(-1, 1)
    if kind == "mix":
        return videos[(torch.arange(N)[:, None] + torch.arange(T)) % N, torch.arange(T)]
    if kind == "shuffle":
        return videos[torch.arange(N)[:, None], torch.rand(N, T, generator=g).argsort(1)]
    if kind == "freeze":
        return videos[:, :1].expand_as(videos).clone()
    if kind == "washout":
        return 0.6 * videos + 0.4
    if kind == "recolour":
        return videos[:, :, [1, 2, 0]]
    raise ValueError(f"unknown degradation {kind}")


def frechet(a, b):
    """Frechet distance between Gaussians fitted to features a (n, d) and b (m, d), in float64:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2). tr (S_a S_b)^1/2 = tr (S_a^1/2 S_b S_a^1/2)^1/2,
    a symmetric PSD matrix, so two eigh calls replace scipy's sqrtm and its complex round-off."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root = (v * np.sqrt(w.clip(0))) @ v.T
    tr_sqrt = np.sqrt(np.linalg.eigvalsh(root @ sb @ root).clip(0)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt)


def boot_sd(a, ref, n_boot, seed=0):
    """SD of the FD over resamples (with replacement) of the set a, the reference held fixed."""
    rng = np.random.default_rng(seed)
    return float(np.std([frechet(a[rng.integers(0, len(a), len(a))], ref) for _ in range(n_boot)]))


def reference(ev, prompts, world=data.WorldConfig()):
    """What every model is measured against, from the world alone (identical for every model of the
    same world at a given n): real set 0 (the FD reference), real set 1 (the ceiling, = 1) and the
    anchors made from set 1 (= 0, one per quality dimension; chance level for the semantic ones)."""
    a, b = (real_videos(prompts, ev["size"], ev["frames"], w, world) for w in (0, 1))
    ref, real = score_videos(ev, a, prompts), score_videos(ev, b, prompts)
    anchors = {k: score_videos(ev, degrade(b, k), prompts)["video"] for k in set(ANCHOR.values())}
    ceil = {d: real["video"][d].mean().item() for d in list(QUALITY) + SEMANTIC}
    floor = {**{d: anchors[ANCHOR[d]][d].mean().item() for d in QUALITY}, **CHANCE}
    return dict(ref=ref, real=real, ceil=ceil, floor=floor)


def late_early(curve):
    """Mean of the last quarter of frames / mean of the first quarter (> 1: the metric grows late)."""
    q = max(1, len(curve) // 4)
    return float(np.mean(curve[-q:]) / max(np.mean(curve[:q]), 1e-8))


def scorecard(s, ref, boot_fd=20, seed=0):
    """Everything about one scored set s (from score_videos) against the reference: raw and normalised
    dimensions, Quality / Semantic / Total, FVD-synth with its real-vs-real floor and bootstrap SDs,
    per-frame curves with late/early ratios, and per-video normalised scores (for paired bootstrap)."""
    ceil, floor = ref["ceil"], ref["floor"]
    per_video = {d: ((s["video"][d] - floor[d]) / (ceil[d] - floor[d])).double() for d in ceil}
    per_video["quality"] = sum(w * per_video[d] for d, w in QUALITY.items()) / sum(QUALITY.values())
    per_video["semantic"] = sum(per_video[d] for d in SEMANTIC) / len(SEMANTIC)
    per_video["total"] = (4 * per_video["quality"] + per_video["semantic"]) / 5
    gen, a, b = s["clip_feat"].numpy(), ref["ref"]["clip_feat"].numpy(), ref["real"]["clip_feat"].numpy()
    T = s["frame_emb"].shape[1]
    curves = {k: v.mean(0).tolist() for k, v in s["frame"].items()}
    curves["fd_frame"] = [frechet(s["frame_emb"][:, t], ref["ref"]["frame_emb"][:, t]) for t in range(T)]
    curves["fd_frame_real"] = [frechet(ref["real"]["frame_emb"][:, t], ref["ref"]["frame_emb"][:, t])
                               for t in range(T)]
    return dict(
        dimensions={d: dict(raw=s["video"][d].mean().item(), norm=per_video[d].mean().item(), real=ceil[d],
                            anchor=floor[d], anchor_kind=ANCHOR.get(d, "chance")) for d in ceil},
        quality=per_video["quality"].mean().item(), semantic=per_video["semantic"].mean().item(),
        total=per_video["total"].mean().item(), clip_direction=s["video"]["clip_direction"].mean().item(),
        fvd_synth=dict(fd=frechet(gen, a), boot_sd=boot_sd(gen, a, boot_fd, seed), floor=frechet(b, a),
                       floor_boot_sd=boot_sd(b, a, boot_fd, seed), n=len(gen),
                       feat=np.round(gen, 5).tolist(), ref_feat=np.round(a, 5).tolist()),   # for --compare
        curves=curves,
        late_early={k: late_early(curves[k])
                    for k in ("fd_frame", "colour_err", "noise", "colour_acc", "shape_acc", "step")},
        per_video={k: v.tolist() for k, v in {**per_video, **{f"raw_{d}": s["video"][d] for d in ceil}}.items()})


# -----------------------------------------------------------------------------
# comparing two models on the same prompts and seeds

def paired_bootstrap(a, b, n_boot=1000, seed=0):
    """Mean of b - a over paired per-video scores (same prompts and seeds) with a 95% percentile CI from
    resampling the pairs, and a two-sided bootstrap p-value. Returns (diff, lo, hi, p)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same videos: {a.shape} vs {b.shape}")
    d = b - a
    return ci(d.mean(), d[np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))].mean(1))


def ci(diff, boots):
    """(diff, 95% percentile CI of the bootstrap differences, two-sided bootstrap p-value)."""
    boots = np.asarray(boots)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    p = min(1.0, 2 * min((boots <= 0).mean(), (boots >= 0).mean()))
    return float(diff), float(lo), float(hi), float(p)


def paired_fd(fa, fb, ref, n_boot=200, seed=0):
    """FD(b) - FD(a) against the same reference with a 95% CI, resampling the video pairs (same
    indices for a and b) and the reference set independently: the paired version of FVD-synth's SD,
    much tighter for a difference because both models share the prompts, seeds and reference."""
    fa, fb, ref = (np.asarray(x, np.float64) for x in (fa, fb, ref))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i, j = rng.integers(0, len(fa), len(fa)), rng.integers(0, len(ref), len(ref))
        boots.append(frechet(fb[i], ref[j]) - frechet(fa[i], ref[j]))
    return ci(frechet(fb, ref) - frechet(fa, ref), boots)


def compare(path_a, path_b, n_boot=1000):
    """Rows (name, mean a, mean b, diff, lo, hi, p) for every per-video score two result JSONs share."""
    ra, rb = (json.load(open(p)) for p in (path_a, path_b))
    if ra["prompts"] != rb["prompts"] or ra["noise_seeds"] != rb["noise_seeds"]:
        raise ValueError(f"{path_a} and {path_b} were not scored on the same prompts and seeds "
                         "(use the same --n and --seed)")
    # older JSONs lack newer fields; every scorecard draws single-object clips, so neither p_two nor
    # two_apart counts
    world = lambda r: replace(data.WorldConfig(**r["world"]), p_two=0, two_apart=False) if "world" in r else None
    if world(ra) != world(rb):
        raise ValueError(f"{path_a} and {path_b} were scored against different worlds (their teachers')")
    va, vb = ra["scores"]["per_video"], rb["scores"]["per_video"]
    rows = [(k, np.mean(va[k]), np.mean(vb[k])) + paired_bootstrap(va[k], vb[k], n_boot) for k in va if k in vb]
    return rows, ra, rb


# -----------------------------------------------------------------------------
# does a teacher read each caption word? (--diagnose)

def two_objects(videos, factors, min_area=8, apart=4.0):
    """Two-object captions: per video, the share of frames where each captioned colour covers at least
    min_area object pixels (each pixel judged by its nearest world colour) with the two regions'
    centroids at least `apart` pixels apart, and 1 where both colours are drawn in every frame and each
    colour's track moves in its own word's direction. Returns (drawn apart (N,), directions (N,))."""
    mask, _, _ = track(videos)
    u = (videos.clamp(-1, 1) + 1) / 2                                             # (N, F, C, H, W)
    palette = torch.tensor(list(data.COLOURS.values()))                           # (K, C)
    nearest = ((u[:, :, None] - palette[None, None, :, :, None, None]) ** 2).sum(3).argmin(2)
    want = [torch.tensor([COLOURS.index(f["colours"][k]) for f in factors])[:, None, None, None] for k in (0, 1)]
    (c0, a0), (c1, a1) = (centroids(mask & (nearest == w)) for w in want)          # (N, F, 2), (N, F)
    drawn = (a0 >= min_area) & (a1 >= min_area)                                    # (N, F)
    ok = drawn & ((c0 - c1).norm(dim=-1) >= apart)
    right = [tracker_direction(c) == torch.tensor([DIRECTIONS.index(f["directions"][k]) for f in factors])
             for k, c in enumerate((c0, c1))]
    return ok.float().mean(1), (right[0] & right[1] & drawn.all(1)).float()


@torch.no_grad()
def diagnose(path, n=48, sigmas=(0.3, 0.5, 0.7, 0.85, 0.95)):
    """A teacher's flow loss on n single-object clips with the true caption, with one factor swapped
    (direction to its opposite, shape, colour) and with no caption, at fixed noise levels and one fixed
    noise draw: a word whose swap leaves the loss unchanged is ignored. Then how far the direction word
    moves the object, and the tracker's direction accuracy of samples from noise and from a given
    first frame."""
    ck = M.load_checkpoint(path, "teacher")
    net, tok, _ = sample.load(ck)
    wc = replace(data.world_of(ck), frames=net.cfg.frames, p_two=0.0)   # the world it was trained on
    clips = [data.make_clip([77, i], wc) for i in range(n)]
    x0, caps = torch.stack([torch.from_numpy(c[0]) for c in clips]), [c[1].split() for c in clips]
    nxt = lambda names, w: names[(names.index(w) + 1) % len(names)]
    opposite = dict(left="right", right="left", up="down", down="up")
    swaps = {"true": lambda w: w, "direction": lambda w: w[:4] + [opposite[w[4]]] + w[5:],
             "shape": lambda w: w[:2] + [nxt(data.SHAPES, w[2])] + w[3:],
             "colour": lambda w: w[:1] + [nxt(COLOURS, w[1])] + w[2:], "none": lambda w: []}
    encode = lambda swap: tok.encode([" ".join(swaps[swap](w)) for w in caps])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    print(f"{path}: flow loss on {n} clips, one caption factor swapped")
    for s in sigmas:
        losses = {k: teacher.flow_loss(net, x0, encode(k), eps, torch.full((n,), s)).item() for k in swaps}
        print(f"sigma {s:.2f}: " + " | ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    # first frame given clean, the others at sigma s: how far the x0 prediction's last frame moved
    # along the caption's direction, with the true and the opposite word
    unit = torch.tensor([data.DIRECTIONS[w[4]] for w in caps])

    def along(video):
        centres = track(video)[1]
        return ((centres[:, -1] - centres[:, 0]) * unit).sum(-1).mean().item()
    for s in (0.9, 1.0):
        sig = torch.full(x0.shape[:2], s)
        sig[:, 0] = 0.0
        x = M.add_noise(x0, eps, sig)
        moved = {k: along(M.v_to_x0(x, net(x, sig, encode(k)), sig)) for k in ("true", "direction")}
        print(f"first frame given, rest at sigma {s:.1f}: last frame moved {moved['true']:+.2f} px along the "
              f"caption's direction with its word, {moved['direction']:+.2f} with the opposite word "
              f"(real clips {along(x0):+.2f})")
    ids, ids_u = net.encode_text(encode("true")), net.encode_text(tok.encode([""] * n))
    true = torch.tensor([DIRECTIONS.index(w[4]) for w in caps])
    for name, ctx in (("from noise", None), ("first frame given", x0[:, :1])):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
        video = M.euler_sample(net, noise, ids, ids_u, 16, 3.0, context=ctx)[0]
        acc = (tracker_direction(track(video)[1]) == true).float().mean()
        print(f"16 Euler steps, CFG 3, {name}: tracker direction accuracy {acc:.3f} (chance 0.25)")
    x2, caps2, facts2, _ = data.make_batch([[78, i] for i in range(n)], replace(wc, p_two=1.0))
    noise = torch.randn(x2.shape, generator=torch.Generator().manual_seed(3))
    real, real_dir = two_objects(x2, facts2)
    for name, compose in (("CFG 3", None), ("composed (model.Compose)", sample.compose_of(net, tok, caps2))):
        video = M.euler_sample(net, noise, net.encode_text(tok.encode(caps2)), ids_u, 16, 3.0, compose=compose)[0]
        got, got_dir = two_objects(video, facts2)
        print(f"two-object captions, 16 Euler steps, {name}, from noise: both colours drawn apart in "
              f"{got.mean():.3f} of frames (real clips {real.mean():.3f}), both directions right in "
              f"{got_dir.mean():.3f} of videos (real {real_dir.mean():.3f})")


# -----------------------------------------------------------------------------
# CLI: --train, --compare, or score one checkpoint

def cli_compare(cfg):
    paths = cfg.compare.split(",")
    if len(paths) != 2 or not all(os.path.exists(p) for p in paths):
        sys.exit(f"error: --compare needs two existing result JSONs a.json,b.json, got {cfg.compare!r}")
    try:
        rows, ra, rb = compare(*paths, cfg.boot)
    except (ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
    print(f"b - a, paired bootstrap over {len(ra['prompts'])} videos ({cfg.boot} resamples); "
          f"a = {ra['name']}, b = {rb['name']}")
    print(f"{'score (normalised)':24s} {'a':>8s} {'b':>8s} {'b - a':>8s} {'95% CI':>20s} {'p':>6s} {'to Total':>8s}")
    for k, ma, mb, d, lo, hi, p in rows:
        if not k.startswith("raw_"):
            part = f" {TOTAL_WEIGHT[k] * d:+8.4f}" if k in TOTAL_WEIGHT else ""   # its part of the Total's
            print(f"{k:24s} {ma:8.4f} {mb:8.4f} {d:+8.4f} [{lo:+8.4f}, {hi:+8.4f}] {p:6.3f}{part}")
    fa, fb = ra["scores"]["fvd_synth"], rb["scores"]["fvd_synth"]
    print(f"FVD-synth: a {fa['fd']:.1f} +- {fa['boot_sd']:.1f} | b {fb['fd']:.1f} +- {fb['boot_sd']:.1f} | "
          f"real-vs-real floor {fa['floor']:.1f} at N={fa['n']}")
    d, lo, hi, p = paired_fd(fa["feat"], fb["feat"], fa["ref_feat"], min(cfg.boot, 200))
    print(f"{'FVD-synth b - a (paired)':24s} {fa['fd']:8.1f} {fb['fd']:8.1f} {d:+8.1f} "
          f"[{lo:+8.1f}, {hi:+8.1f}] {p:6.3f}")


def cli_table(cfg):
    """The README's results table, one row per result JSON (Total/Quality/Semantic with 95% bootstrap CIs
    over videos, FVD-synth +- SD with its floor, late/early per-frame FD ratio, held-out joint accuracy), then
    the raw semantic accuracies and the step-to-step x0 similarity per frame block (the paper's Figure 2)."""
    print("| model | steps | Total | Quality | Semantic | FVD-synth (floor) | late/early FD | direction "
          "| held-out joint |\n|---|---|---|---|---|---|---|---|---|")
    missing = [p for p in cfg.table.split(",") if not os.path.exists(p)]
    if missing:
        sys.exit(f"error: --table: no result JSON {missing[0]}")
    rs = [json.load(open(p)) for p in cfg.table.split(",")]
    for r in rs:
        s, v, fv = r["scores"], r["scores"]["per_video"], r["scores"]["fvd_synth"]
        ci = lambda k: f"{np.mean(v[k]):.3f} ± {1.96 * np.std(v[k]) / np.sqrt(len(v[k])):.3f}"
        print(f"| {os.path.basename(r['ckpt'])} | {r['label']} | {ci('total')} | {ci('quality')} | "
              f"{ci('semantic')} | {fv['fd']:.1f} ± {fv['boot_sd']:.1f} ({fv['floor']:.1f}) | "
              f"{s['late_early']['fd_frame']:.2f} | "
              f"{s['dimensions']['direction']['raw']:.3f} | {r['heldout']['joint']['model']:.3f} |")
    print("\n| model | steps | raw shape / colour / direction | held-out direction | step-to-step x0 similarity "
          "of the 4-step chain per block (mean off-diagonal; first vs last step) |\n|---|---|---|---|---|")
    seen, off = set(), lambda m: (np.sum(m) - np.trace(m)) / (len(m) ** 2 - len(m))   # mean off-diagonal
    for r in rs:   # the similarity belongs to the checkpoint, not the step setting: shown once per checkpoint
        d, sims = r["scores"]["dimensions"], []
        if r.get("similarity") and r["ckpt"] not in seen:
            sims = r["similarity"]["blocks"]
        seen.add(r["ckpt"])
        sim = "-"
        if sims:
            sim = " / ".join(f"{off(np.array(m)):.3f}" for m in sims) + "; "
            sim += " / ".join(f"{m[0][-1]:.2f}" for m in sims)
        print(f"| {os.path.basename(r['ckpt'])} | {r['label']} | {d['shape']['raw']:.3f} / "
              f"{d['colour']['raw']:.3f} / "
              f"{d['direction']['raw']:.3f} | {r['heldout']['direction']['model']:.3f} | {sim} |")


def switch_study(ev, ck, prompts, frame, frames, args):
    """A prompt switch at `frame` of a `frames`-long stream: caption B = caption A with the next colour
    and the opposite direction (same shape and background). Per frame, over videos: the frame net's
    colour is B's (colour_b) or A's (colour_a), the tracked step into the frame along B's direction
    (step_b, px) and its length (jump), the object's area (px, 0 = gone) and the background flicker;
    with no switch, with the cached context kept as it is, and with it recomputed under B (LongLive's
    re-cache). area_kept: the area over the last 4 frames / over the 4 before the switch. Frames to follow:
    from the switch until the mean curve holds half the videos (colour), or until the step along B,
    averaged over the next 4 frames (two blocks), reaches half the world's slowest speed (direction)."""
    opposite = dict(left="right", right="left", up="down", down="up")
    colour_b = [COLOURS[(COLOURS.index(p["colour"]) + 1) % len(COLOURS)] for p in prompts]
    caps_b = [f"a {c} {p['shape']} moving {opposite[p['direction']]} on a {p['background']} background"
              for c, p in zip(colour_b, prompts)]
    unit_b = torch.tensor([data.DIRECTIONS[opposite[p["direction"]]] for p in prompts])
    idx_a, idx_b = (torch.tensor([COLOURS.index(c) for c in cs]) for cs in ([p["colour"] for p in prompts], colour_b))
    out = dict(prompts_b=caps_b)
    for mode in ("none", "keep", "recache"):
        switch = None if mode == "none" else (frame, caps_b, mode == "recache")
        videos, _ = sample_checkpoint(ck, prompts, *args, frames=frames, switch=switch)
        mask, centres, _ = track(videos)
        colour = frame_outputs(ev, videos, centres)[2].argmax(-1)                       # (N, F)
        u, back = (videos + 1) / 2, ~pool(mask, 2)
        diff = (u[:, 1:] - u[:, :-1]).abs().mean(2)                                     # (N, F-1, H, W)
        flicker = masked_mean(diff, or_everywhere(back[:, 1:] & back[:, :-1])).mean(0)
        step = centres.diff(dim=1)                                                      # into frames 1..F-1
        along = [0.0] + (step * unit_b[:, None]).sum(-1).mean(0).tolist()
        curves = dict(colour_b=(colour == idx_b[:, None]).float().mean(0).tolist(),
                      colour_a=(colour == idx_a[:, None]).float().mean(0).tolist(), step_b=along,
                      jump=[0.0] + step.norm(dim=-1).mean(0).tolist(), flicker=[0.0] + flicker.tolist(),
                      area=mask.sum((-1, -2)).float().mean(0).tolist())
        area = curves["area"]
        ahead = [np.mean(along[t:t + 4]) for t in range(frames)]
        follow = lambda c, level, t0: next((t - frame for t in range(t0, frames) if c[t] >= level), None)
        out[mode] = dict(curves=curves, colour_frames=follow(curves["colour_b"], 0.5, frame),
                         direction_frames=follow(ahead, 0.5 * data.WorldConfig.speed[0] * ev["scale"], frame + 1),
                         jump_at_switch=curves["jump"][frame], flicker_at_switch=curves["flicker"][frame],
                         flicker_median=float(np.median(curves["flicker"][1:])),
                         area_kept=float(np.mean(area[-4:]) / np.mean(area[frame - 4:frame])))
    return out


def long_curves(ev, ck, prompts, frames, args):
    """Per-frame curves of a rollout streamed past the trained length (rolling KV window), scored in
    consecutive windows of the evaluator's length: FD of each frame to the real clips' frames, colour and
    shape accuracy, flat-region noise and the tracked step (0 = a frozen video)."""
    videos, _ = sample_checkpoint(ck, prompts, *args, frames=frames)
    real = real_videos(prompts, ev["size"], ev["frames"], world=data.world_of(ck))
    T, ref = ev["frames"], score_videos(ev, real, prompts)
    ref_emb = ref["frame_emb"].flatten(0, 1)
    curves = {k: [] for k in ("fd_frame", "colour_acc", "shape_acc", "noise", "step")}
    for w in range(0, frames - T + 1, T):
        s = score_videos(ev, videos[:, w:w + T], prompts)
        curves["fd_frame"] += [frechet(s["frame_emb"][:, t], ref_emb) for t in range(T)]
        for k in list(curves)[1:]:
            curves[k] += s["frame"][k].mean(0).tolist()
    return curves


def cli_plot(cfg):
    """PNG figures from result JSONs: per-frame curves over the frame index (FD to real clips, colour
    error, noise) for every model, and the step-to-step x0 similarity matrices (the paper's Figure 2)
    of each student JSON, one panel per block."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("error: --plot needs matplotlib (pip install matplotlib; it is optional)")
    rs = [json.load(open(p)) for p in cfg.plot.split(",")]
    os.makedirs(cfg.plot_dir, exist_ok=True)
    keys = [("fd_frame", "per-frame FD to real clips"), ("colour_err", "colour error"),
            ("noise", "flat-region noise")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    for ax, (k, title) in zip(axes, keys):
        for r in (r for r in rs if not r.get("long")):
            ax.plot(range(1, len(r["scores"]["curves"][k]) + 1), r["scores"]["curves"][k], marker=".",
                    label=f"{r['name']} ({r['label']})")
        if k == "fd_frame":
            ax.plot(range(1, len(rs[0]["scores"]["curves"]["fd_frame_real"]) + 1),
                    rs[0]["scores"]["curves"]["fd_frame_real"], "k--", label="real clips (floor)")
        ax.set(title=title, xlabel="frame")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(cfg.plot_dir, "per_frame.png"), dpi=110)
    sims = [r for r in rs if r.get("similarity") and not r.get("long")]
    if sims:
        nb = len(sims[0]["similarity"]["blocks"])
        fig, axes = plt.subplots(len(sims), nb, figsize=(2.6 * nb, 2.5 * len(sims)), squeeze=False)
        for row, r in zip(axes, sims):
            for b, ax in enumerate(row):
                m = np.array(r["similarity"]["blocks"][b])
                ax.imshow(m, vmin=0.6, vmax=1.0, cmap="viridis")
                for (i, j), v in np.ndenumerate(m):
                    colour = "w" if v < 0.85 else "k"
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=colour)
                ax.set(title=f"{r['name']}: block {b}", xlabel="step", ylabel="step",
                       xticks=range(len(m)), yticks=range(len(m)))
        fig.tight_layout()
        fig.savefig(os.path.join(cfg.plot_dir, "similarity.png"), dpi=110)
    longs = [r for r in rs if r.get("long")]
    if longs:   # streaming past the trained length (--long): one panel per curve
        keys = list(longs[0]["long"])
        fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2))
        for ax, k in zip(axes, keys):
            for r in longs:
                ax.plot(range(1, len(r["long"][k]) + 1), r["long"][k], label=f"{r['name']} ({r['label']})")
            ax.axvline(len(r["scores"]["curves"]["fd_frame"]) + 0.5, color="k", ls=":")
            ax.set(title=k, xlabel="frame (dotted: trained length)")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(cfg.plot_dir, "long.png"), dpi=110)
    print(f"wrote {cfg.plot_dir}/per_frame.png" + " similarity.png" * bool(sims) + " long.png" * bool(longs))


def cli_train(cfg, argv):
    t0 = time.perf_counter()
    ev = train_evaluator(cfg.size, cfg.frames, cfg.train_steps, seed=cfg.seed, progress=True, scale=cfg.world_scale)
    seconds = time.perf_counter() - t0
    gates = gate_accuracies(ev, seed=cfg.seed)
    print(" | ".join(f"{k} {v:.3f}" for k, v in gates.items()) + f" | trained in {seconds:.0f} s")
    # saved either way, with its gates: load_evaluator refuses one that failed them
    M.save_checkpoint(dict(kind="evaluator", frame=ev["frame"].state_dict(), clip=ev["clip"].state_dict(),
                           size=cfg.size, frames=cfg.frames, scale=cfg.world_scale, gates=gates, train_seconds=seconds,
                           command="python eval.py " + " ".join(argv)), cfg.evaluator)
    print(f"wrote {cfg.evaluator} ({os.path.getsize(cfg.evaluator) / 1e6:.1f} MB)")
    failed = [f"{k} {gates[k]:.3f} < {g}" for k, g in GATES.items() if gates[k] < g]
    if failed:
        sys.exit(f"error: the evaluator failed its gates ({', '.join(failed)}); train longer: --train_steps")


def print_result(r, cfg):
    s, fv = r["scores"], r["scores"]["fvd_synth"]
    print(f"{r['name']}: {r['label']} steps, N={cfg.n} (+{cfg.n_heldout} held-out), seed {cfg.seed}")
    print(f"{'dimension':24s} {'raw':>8s} {'real':>8s} {'anchor':>8s} {'(kind)':>9s} {'norm':>7s}")
    for d, x in s["dimensions"].items():
        if d == SEMANTIC[0]:
            print(f"{'QUALITY (weighted)':60s}{s['quality']:7.3f}")
        print(f"{d:24s} {x['raw']:8.4f} {x['real']:8.4f} {x['anchor']:8.4f} {x['anchor_kind']:>9s} "
              f"{x['norm']:7.3f}")
    print(f"{'SEMANTIC':60s}{s['semantic']:7.3f}\n{'TOTAL (4 Q + S) / 5':60s}{s['total']:7.3f}")
    print(f"FVD-synth {fv['fd']:.1f} +- {fv['boot_sd']:.1f} (real-vs-real floor {fv['floor']:.1f} "
          f"+- {fv['floor_boot_sd']:.1f}, N={fv['n']}) | clip-net direction accuracy {s['clip_direction']:.3f}")
    for k in ("fd_frame", "fd_frame_real", "colour_acc", "shape_acc", "colour_err", "noise", "step", "pos_err"):
        if k not in s["curves"]:
            continue
        le = f"   late/early {s['late_early'][k]:.2f}" if k in s["late_early"] else ""
        print(f"{k + '(t)':18s}" + " ".join(f"{v:7.3f}" for v in s["curves"][k]) + le)
    print("held-out triples: " + " | ".join(f"{d} {v['model']:.3f} (real {v['real']:.3f})"
                                            for d, v in r["heldout"].items()))
    for b, m in enumerate((r["similarity"] or {}).get("blocks", [])):
        print(f"x0 cos-sim block {b}: " + " | ".join(" ".join(f"{v:.3f}" for v in row) for row in m))


def cli_switch(cfg, ev, ck, prompts, args, stem):
    """--switch=F: the prompt-switch study (switch_study), printed and written to {--name or
    stem_label_switchF}.json."""
    mc = M.ModelConfig(**ck["model_cfg"])
    if not mc.causal or cfg.switch % mc.frames_per_block or not 0 < cfg.switch < cfg.switch_frames:
        sys.exit(f"error: --switch needs a causal student and a block boundary inside --switch_frames")
    r = switch_study(ev, ck, prompts, cfg.switch, cfg.switch_frames, args)
    label = sample.label(True, cfg.steps, cfg.first_steps if cfg.ffe and cfg.first_steps > cfg.steps else 0)
    print(f"{stem} at {label} steps, {len(prompts)} videos of {cfg.switch_frames} frames, caption switched at "
          f"frame {cfg.switch} (next colour, opposite direction)")
    print(f"{'context':8s} {'frames to colour':>16s} {'to direction':>13s} {'jump at switch (px)':>20s} "
          f"{'flicker at switch / median':>27s} {'area last 4 / before':>21s}")
    for mode in ("none", "keep", "recache"):
        m = r[mode]
        print(f"{mode:8s} {m['colour_frames']!s:>16s} {m['direction_frames']!s:>13s} {m['jump_at_switch']:20.2f} "
              f"{m['flicker_at_switch']:13.4f} / {m['flicker_median']:.4f} {m['area_kept']:21.2f}")
        for k, v in m["curves"].items():
            print(f"  {k + '(t)':12s}" + " ".join(f"{x:5.2f}" for x in v))
    os.makedirs(cfg.out, exist_ok=True)
    name = cfg.name or f"{stem}_{label.replace('*', 'star')}_switch{cfg.switch}"
    path = os.path.join(cfg.out, name + ".json")
    with open(path, "w") as f:
        json.dump(dict(ckpt=cfg.ckpt, label=label, config=asdict(cfg), prompts=[p["caption"] for p in prompts],
                       **r), f)
    print(f"wrote {path}")


def main(argv):
    cfg = M.parse_args(EvalConfig(), argv, PRESETS, __doc__)
    if cfg.diagnose:
        return diagnose(cfg.diagnose)
    if cfg.compare:
        return cli_compare(cfg)
    if cfg.table:
        return cli_table(cfg)
    if cfg.plot:
        return cli_plot(cfg)
    if cfg.train:
        return cli_train(cfg, argv)
    if not cfg.ckpt:
        sys.exit("error: give --ckpt=PATH to score, or one of --train, --compare, --table, --plot, --diagnose")
    t_start = time.perf_counter()
    try:
        ev = load_evaluator(cfg.evaluator)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    ck = M.load_checkpoint(cfg.ckpt, ("student", "teacher"))
    mc = M.ModelConfig(**ck["model_cfg"])
    world = data.world_of(ck)
    if (mc.size, mc.frames, world.scale) != (ev["size"], ev["frames"], ev["scale"]):
        sys.exit(f"error: the evaluator {cfg.evaluator} knows {ev['size']} px x {ev['frames']} frames at world "
                 f"scale {ev['scale']:g}, the model makes {mc.size} x {mc.frames} at {world.scale:g}; train one: "
                 f"python eval.py --train=true --size={mc.size} --frames={mc.frames} --world_scale={world.scale:g} "
                 f"--evaluator=ckpt/evaluator_{mc.size}x{mc.frames}.pt")
    _, _, device = M.setup(cfg.device, cfg.seed)
    prompts, heldout = prompt_grid(cfg.n, "train", cfg.seed), prompt_grid(cfg.n_heldout, "heldout", cfg.seed)
    args = (cfg.steps, cfg.ffe, cfg.first_steps, cfg.cfg, cfg.batch, device)
    stem = os.path.splitext(os.path.basename(cfg.ckpt))[0]
    if cfg.switch:
        return cli_switch(cfg, ev, ck, prompts, args, stem)
    first = first_h = None
    if cfg.i2v:   # the ceiling set's clips: their first frames are given, their tracks are the truth
        real, true_centres = real_videos(prompts, ev["size"], ev["frames"], 1, world, centres=True)
        first, first_h = real[:, 0], real_videos(heldout, ev["size"], ev["frames"], 1, world)[:, 0]
    t, t0 = {}, time.perf_counter()
    try:
        videos, label = sample_checkpoint(ck, prompts, *args, first_frames=first)
        t["sample"] = time.perf_counter() - t0
        videos_h, _ = sample_checkpoint(ck, heldout, *args, first_frames=first_h)
    except ValueError as e:
        sys.exit(f"error: {e}")
    t["sample_heldout"], t0 = time.perf_counter() - t0 - t["sample"], time.perf_counter()
    sim = step_similarity(ck, prompts[:cfg.sim_n], device) if mc.causal and not cfg.i2v else None
    t["similarity"], t0 = time.perf_counter() - t0, time.perf_counter()
    scores = scorecard(score_videos(ev, videos, prompts), reference(ev, prompts, world), cfg.boot_fd, cfg.seed)
    held, ref_h = score_videos(ev, videos_h, heldout)["video"], reference(ev, heldout, world)
    if cfg.i2v:   # how far the object is from where the real clip that starts from the same frame has it
        scores["curves"]["pos_err"] = (track(videos)[1] - true_centres).norm(dim=-1).mean(0).tolist()
    t["evaluate"] = time.perf_counter() - t0
    if cfg.long and mc.causal:
        if cfg.long % ev["frames"]:
            sys.exit(f"error: --long must be a multiple of {ev['frames']} frames")
        long = long_curves(ev, ck, prompts[:64], cfg.long, args)
        for k, v in long.items():
            print(f"long {k + '(t)':16s}" + " ".join(f"{x:.3f}" for x in v))
    name = cfg.name or f"{stem}_{label.replace('*', 'star')}" + "_i2v" * cfg.i2v
    result = dict(name=name, ckpt=cfg.ckpt, label=label, config=asdict(cfg), evaluator_gates=ev["gates"],
                  world=asdict(world), prompts=[p["caption"] for p in prompts],
                  noise_seeds=[p["noise"] for p in prompts], scores=scores,
                  heldout={d: dict(model=held[d].mean().item(), real=ref_h["ceil"][d]) for d in SEMANTIC},
                  similarity=sim and dict(blocks=sim[0].tolist(), frames=sim[1].tolist()), timings=t,
                  long=long if cfg.long and mc.causal else None)
    print_result(result, cfg)
    os.makedirs(cfg.out, exist_ok=True)
    path = os.path.join(cfg.out, name + ".json")
    with open(path, "w") as f:
        json.dump(result, f)
    print(f"time: sample {t['sample']:.1f} s | held-out {t['sample_heldout']:.1f} s | similarity "
          f"{t['similarity']:.1f} s | evaluate {t['evaluate']:.1f} s | "
          f"total {time.perf_counter() - t_start:.1f} s"
          f" | wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
