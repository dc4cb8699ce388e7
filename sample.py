"""
Sample videos: the causal student with 1, 2 or 4 steps per block (FFE on by default), or the
teacher with many Euler steps and CFG. Writes an mp4 (h264), a gif and a PNG grid of frames.

    python sample.py --steps 1                                    # shipped ASD student, 1* steps
    python sample.py --steps 2 --ffe false                        # plain 2 steps, no FFE
    python sample.py --prompt "a red circle moving left on a dark background" --n 4 --seed 3
    python sample.py --frames 32                                  # stream 4x the trained length
    python sample.py --ckpt ckpt/teacher_tiny.pt --steps 32 --cfg 3   # the teacher

The model is rebuilt from the checkpoint alone (EMA weights, config, tokenizer).
"""
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

import data
import model as M


@dataclass
class SampleConfig:
    ckpt: str = "ckpt/asd_tiny.pt"  # a student (causal) or teacher checkpoint
    prompt: str = ""                # caption; empty = a different world caption per sample
    n: int = 4                      # number of videos
    seed: int = 0                   # noise seed
    steps: int = 1                  # denoising steps per block (student) or Euler steps (teacher)
    ffe: bool = True                # First-Frame Enhancement: block 0 gets first_steps steps
    first_steps: int = 4            # steps of the first block with FFE
    frames: int = 0                 # frames to generate (0 = the trained length); more streams
    cfg: float = 3.0                # teacher only: classifier-free guidance scale
    out: str = "out/samples"        # output folder
    fps: int = 8                    # frames per second of the mp4 / gif
    device: str = "auto"            # auto | cpu | cuda | mps
    compile: bool = False           # torch.compile the network: ~1.5x on large batches, ~1.7x streaming at batch 1, after a compile of 10 s to minutes


def to_uint8(video):
    """(..., C, H, W) in [-1, 1] -> (..., H, W, C) uint8."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()


def write_outputs(videos, captions, path, fps):
    """videos (B, F, C, H, W): a side-by-side mp4 and gif (upscaled 4x), and a PNG grid (rows = videos)."""
    import imageio.v3 as iio
    frames = to_uint8(videos)                                              # (B, F, H, W, C)
    movie = np.concatenate(list(frames), axis=2).repeat(4, 1).repeat(4, 2)  # (F, 4H, 4*B*W, C)
    iio.imwrite(path + ".gif", movie, duration=1000 // fps, loop=0)
    iio.imwrite(path + ".mp4", movie, fps=fps, codec="libx264", macro_block_size=1)
    grid = np.concatenate([np.concatenate(list(v), axis=1) for v in frames], axis=0)   # (B*H, F*W, C)
    iio.imwrite(path + ".png", grid.repeat(4, 0).repeat(4, 1))
    with open(path + ".txt", "w") as f:
        f.write("\n".join(captions) + "\n")


def main(argv):
    cfg = M.parse_args(SampleConfig(), argv)
    ck = M.load_checkpoint(cfg.ckpt, ("student", "teacher"))
    _, _, device, _ = M.setup(cfg.device, cfg.seed)
    net = M.build_model(ck).to(device).eval()
    mc = net.cfg
    if cfg.compile:
        net = M.compile_sampler(net)
    tok = data.Tokenizer(bytes(ck["tokenizer"].tolist()), max_len=mc.text_len)
    if cfg.prompt.strip() == "" and "--prompt" in " ".join(argv):
        sys.exit("error: --prompt is empty; give a caption such as 'a red circle moving left on a dark background'")
    captions = [cfg.prompt] * cfg.n if cfg.prompt else \
        [data.make_clip([cfg.seed, 3, i], data.WorldConfig(frames=1))[1] for i in range(cfg.n)]
    unknown = tok.unknown_words(captions[0]) if cfg.prompt else []
    if unknown:
        print(f"warning: words the tokenizer has never seen are ignored as <unk>: {', '.join(unknown)}")
    try:
        ids = tok.encode(captions).to(device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    frames = cfg.frames or mc.frames
    if cfg.steps < 1 or frames < 1:
        sys.exit("error: --steps and --frames must be positive")
    g = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn((cfg.n, frames, mc.channels, mc.size, mc.size), generator=g).to(device)
    first = {}
    t0 = time.perf_counter()
    if mc.causal:
        if frames % mc.frames_per_block:
            sys.exit(f"error: --frames must be a multiple of the block size {mc.frames_per_block}")
        n_max = ck.get("train_cfg", {}).get("n_steps", 4)
        sigmas = M.few_step_sigmas(n_max, mc.shift)
        if max(cfg.steps, cfg.first_steps if cfg.ffe else 0) > n_max:
            sys.exit(f"error: this student was trained for at most {n_max} steps per block")
        ffe = cfg.first_steps if cfg.ffe and cfg.first_steps > cfg.steps else 0
        label = f"{cfg.steps}*" if ffe else f"{cfg.steps}"
        # past the trained length, keep a rolling window so context + block = the trained span
        window = mc.frames - mc.frames_per_block if frames > mc.frames else 0
        with torch.no_grad():
            videos = M.rollout(net, noise, ids, M.block_schedules(frames // mc.frames_per_block, cfg.steps, ffe, sigmas),
                               window=window, generator=g,
                               on_block=lambda b, x: first.setdefault("t", time.perf_counter()))
    else:
        if frames != mc.frames:
            sys.exit(f"error: the bidirectional teacher generates exactly {mc.frames} frames")
        label = f"teacher{cfg.steps}"
        videos, _ = M.euler_sample(net, noise, net.encode_text(ids), net.encode_text(tok.encode([""] * cfg.n).to(device)),
                                   cfg.steps, cfg.cfg)
        first["t"] = time.perf_counter()   # a bidirectional model shows nothing before the end
    total = time.perf_counter() - t0
    os.makedirs(cfg.out, exist_ok=True)
    path = os.path.join(cfg.out, f"sample_{label.replace('*', 'star')}")
    write_outputs(videos, captions, path, cfg.fps)
    print(f"{label} steps | {cfg.n} x {frames} frames | latency to first frame {(first['t'] - t0) * 1e3:.0f} ms | "
          f"{cfg.n * frames / total:.1f} frames/s | wrote {path}.mp4 .gif .png")


if __name__ == "__main__":
    main(sys.argv[1:])
