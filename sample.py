r"""
Sample videos: the causal student with 1, 2 or 4 steps per block (FFE on by default), or the
teacher with many Euler steps and CFG. Writes a gif, a PNG grid of frames and, with imageio-ffmpeg,
an mp4 (h264).

    python sample.py --steps 1                                    # shipped ASD student, 1* steps
    python sample.py --steps 2 --ffe false                        # plain 2 steps, no FFE
    python sample.py --prompt "a red circle moving left on a dark background" --n 4 --seed 3
    python sample.py --frames 32                                  # stream 4x the trained length
    python sample.py --first_frame img.png --prompt "a red circle moving left on a dark background"
    python sample.py --prompt "a red circle moving left on a dark background" --frames 32 \
                     --switch "16:a blue circle moving up on a dark background"       # prompt switch
    python sample.py --ckpt ckpt/teacher_tiny.pt --steps 32       # the teacher, CFG 3
    python sample.py --ckpt ckpt/teacher_28000.pt --steps 16 \
                     --prompt "a red circle moving left and a blue square moving up on a dark background"
    python sample.py --device cuda --compile true                 # one GPU (bf16 autocast)

The model is rebuilt from the checkpoint alone (EMA weights, config, tokenizer). eval.py samples
through generate() below, so what it scores is what this script shows.
"""
import importlib.util
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
    prompt: str = ""                # caption, or captions "A|B|..." cycled over the videos; empty = world captions
    n: int = 4                      # number of videos
    seed: int = 0                   # noise seed
    steps: int = 1                  # denoising steps per block (student) or Euler steps (teacher)
    ffe: bool = True                # First-Frame Enhancement: block 0 gets first_steps steps
    first_steps: int = 4            # steps of the first block with FFE
    frames: int = 0                 # frames to generate (0 = the trained length); more streams
    cfg: float = 3.0                # teacher only: classifier-free guidance scale
    compose: bool = True            # teacher only: guide "A and B on a ..." also by A and B alone (model.Compose)
    out: str = "out/samples"        # output folder
    fps: int = 8                    # frames per second of the mp4 / gif
    device: str = "auto"            # auto | cpu | cuda | mps
    first_frame: str = ""           # image-to-video: an image file (any size) given as clean frame 0
    switch: str = ""                # "F:caption": from frame F (a block boundary) on, this caption
    recache: bool = True            # at a switch, recompute the cached context under the new caption
    compile: bool = False           # torch.compile the network (pays off on long streams)


def load(ck, device="cpu"):
    """(net, tokenizer, n_max) from a checkpoint dict: EMA weights; n_max = the student's trained steps."""
    net = M.build_model(ck).to(device).eval()
    tok = data.Tokenizer(bytes(ck["tokenizer"].tolist()), max_len=net.cfg.text_len)
    return net, tok, ck.get("train_cfg", {}).get("n_steps", 4)


def label(causal, steps, first_steps):
    """The paper's names: '1*' = 1 step with FFE, '2' = 2 steps; 'teacher32' = 32 Euler steps."""
    return (f"{steps}*" if first_steps else f"{steps}") if causal else f"teacher{steps}"


def compose_of(net, tok, captions, device="cpu"):
    """The composable guidance (model.Compose) of a batch of captions: each object of a caption that
    names several is a part; None where no caption does."""
    parts = [data.caption_parts(c) for c in captions]
    if not any(parts):
        return None
    k_max = max(len(p) for p in parts)
    texts = [net.encode_text(tok.encode([p[k] if k < len(p) else "" for p in parts]).to(device))
             for k in range(k_max)]
    return M.Compose(texts, torch.tensor([bool(p) for p in parts], device=device))


@torch.no_grad()
def generate(net, ids, ids_u, noise, steps, first_steps=0, n_max=4, cfg=3.0, generator=None, on_block=None,
             first_frame=None, switch=None, compose=None):
    """One batch of videos (B, F, C, H, W) from noise (B, F, C, H, W) and caption ids (B, Lt).
    Student: the KV-cached causal rollout, `steps` per block and `first_steps` for block 0 (FFE; 0 = off),
    with a rolling window past the trained length. Teacher: Euler with CFG `cfg` (ids_u = empty captions)
    and compose (compose_of). first_frame (B, C, H, W): image-to-video; switch (frame, ids_b, recache):
    see model.rollout."""
    mc = net.cfg
    with M.autocast(noise.device):
        if not mc.causal:
            context = None if first_frame is None else first_frame[:, None]
            text, empty = net.encode_text(ids), net.encode_text(ids_u)
            return M.euler_sample(net, noise, text, empty, steps, cfg, context=context, compose=compose)[0].float()
        sched = M.block_schedules(noise.shape[1] // mc.frames_per_block, steps, first_steps,
                                  M.few_step_sigmas(n_max, mc.shift))
        # past the trained length, keep a rolling window so that context + block = the trained span
        window = mc.frames - mc.frames_per_block if noise.shape[1] > mc.frames else 0
        return M.rollout(net, noise, ids, sched, window=window, generator=generator, on_block=on_block,
                         first_frame=first_frame, switch=switch).float()


def parse_switch(text, frames, mc, tok, n, device):
    """--switch "F:caption" -> (F, caption ids (n, Lt)), or exit with one line."""
    frame, _, caption = text.partition(":")
    if not frame.strip().isdigit() or not caption.strip():
        sys.exit(f"error: --switch must be 'FRAME:caption' with a non-empty caption, got {text!r}")
    frame = int(frame)
    if not mc.causal:
        sys.exit("error: --switch needs a causal student (the teacher denoises all frames at once)")
    if not 0 < frame < frames or frame % mc.frames_per_block:
        sys.exit(f"error: --switch frame {frame} must be inside the video (0 < F < {frames}) and a multiple "
                 f"of the block size {mc.frames_per_block}")
    try:
        return frame, tok.encode([caption] * n).to(device)
    except ValueError as e:
        sys.exit(f"error: --switch: {e}")


def has_ffmpeg():
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def to_uint8(video):
    """(..., C, H, W) in [-1, 1] -> (..., H, W, C) uint8."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()


def write_outputs(videos, captions, path, fps):
    """videos (B, F, C, H, W): a gif and an mp4 with the videos stacked top to bottom (upscaled 4x), and
    a PNG grid (rows = videos, columns = frames). Returns the files written."""
    import imageio.v3 as iio
    frames = to_uint8(videos)                                               # (B, F, H, W, C)
    movie = np.concatenate(list(frames), axis=1).repeat(4, 1).repeat(4, 2)  # (F, 4*B*H, 4W, C)
    grid = np.concatenate([np.concatenate(list(v), axis=1) for v in frames], axis=0)   # (B*H, F*W, C)
    iio.imwrite(path + ".gif", movie, duration=1000 // fps, loop=0)
    iio.imwrite(path + ".png", grid.repeat(4, 0).repeat(4, 1))
    with open(path + ".txt", "w") as f:
        f.write("\n".join(captions) + "\n")
    written = [path + ".gif", path + ".png"]
    if has_ffmpeg():   # without the plugin imageio would pick its TIFF writer and fail on fps
        iio.imwrite(path + ".mp4", movie, fps=fps, codec="libx264", macro_block_size=1)
        written.insert(0, path + ".mp4")
    return written


def main(argv):
    cfg = M.parse_args(SampleConfig(), argv, doc=__doc__)
    ck = M.load_checkpoint(cfg.ckpt, ("student", "teacher"))
    _, _, device = M.setup(cfg.device, cfg.seed)
    net, tok, n_max = load(ck, device)
    mc = net.cfg
    if cfg.compile:
        net = M.compile_sampler(net)
    given = [c.strip() for c in cfg.prompt.split("|")]
    if not all(given) and any(a.startswith("--prompt") for a in argv):
        sys.exit("error: --prompt is empty; give a caption such as 'a red circle moving left on a dark background'")
    captions = [given[i % len(given)] for i in range(cfg.n)] if cfg.prompt else \
        [data.make_clip([cfg.seed, 3, i], data.WorldConfig(frames=1))[1] for i in range(cfg.n)]
    unknown = sorted({w for c in set(captions) for w in tok.unknown_words(c)}) if cfg.prompt else []
    if unknown:
        print(f"warning: words the tokenizer has never seen are ignored as <unk>: {', '.join(unknown)}")
    try:
        ids, ids_u = tok.encode(captions).to(device), tok.encode([""] * cfg.n).to(device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    frames = cfg.frames or mc.frames
    first_steps = cfg.first_steps if mc.causal and cfg.ffe and cfg.first_steps > cfg.steps else 0
    if cfg.steps < 1 or frames < 1:
        sys.exit("error: --steps and --frames must be positive")
    if mc.causal and frames % mc.frames_per_block:
        sys.exit(f"error: --frames must be a multiple of the block size {mc.frames_per_block}")
    if mc.causal and max(cfg.steps, first_steps) > n_max:
        sys.exit(f"error: this student was trained for at most {n_max} steps per block")
    if not mc.causal and frames != mc.frames:
        sys.exit(f"error: the bidirectional teacher generates exactly {mc.frames} frames")
    image, switch = None, None
    if cfg.first_frame:
        try:
            image = data.load_image(cfg.first_frame, mc.size)[None].expand(cfg.n, -1, -1, -1).to(device)
        except ValueError as e:
            sys.exit(f"error: --first_frame: {e}")
    if cfg.switch:
        switch = (*parse_switch(cfg.switch, frames, mc, tok, cfg.n, device), cfg.recache)
    compose = compose_of(net, tok, captions, device) if cfg.compose and not mc.causal else None
    g = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn((cfg.n, frames, mc.channels, mc.size, mc.size), generator=g).to(device)
    first, t0 = {}, time.perf_counter()
    videos = generate(net, ids, ids_u, noise, cfg.steps, first_steps, n_max, cfg.cfg, g,
                      on_block=lambda b, x: first.setdefault("t", time.perf_counter()), first_frame=image,
                      switch=switch, compose=compose)
    total = time.perf_counter() - t0
    first.setdefault("t", time.perf_counter())   # a bidirectional model shows nothing before the end
    name = label(mc.causal, cfg.steps, first_steps)
    os.makedirs(cfg.out, exist_ok=True)
    path = os.path.join(cfg.out, f"sample_{name.replace('*', 'star')}")
    written = write_outputs(videos, captions, path, cfg.fps)
    print(f"{name} steps | {cfg.n} x {frames} frames | latency to first frame {(first['t'] - t0) * 1e3:.0f} ms | "
          f"{cfg.n * frames / total:.1f} frames/s")
    if not has_ffmpeg():
        print("no mp4: imageio-ffmpeg is not installed (pip install imageio-ffmpeg)")
    print("wrote " + " ".join(written))


if __name__ == "__main__":
    main(sys.argv[1:])
