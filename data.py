"""
Data: a procedural world of captioned videos, a loader for folders of real clips, and the tokenizer.

    python data.py                       # writes out/world.gif: a grid of clips with their captions
    python data.py --data=path/to/clips  # checks a folder of clip.mp4|clip.gif + clip.txt pairs

The world: one or two coloured shapes move in a named direction over a dark or grey background,
plain or softly graded. By default (the world the shipped teacher learnt) every object starts with
room for its whole clip of straight motion both ways, so it never bounces and its start does not
reveal its direction; wall_free=0 gives the bouncing world the evaluator nets learn from. Every clip
is a pure function of its seed and returns its caption, its ground-truth factors and the per-frame
object centres, which eval.py uses. The first frame fixes the layout and later frames only continue
the motion (the premise of FFE). Some colour x shape x direction triples are held out of training.
Layout: video (F, C, H, W) float32 in [-1, 1]; a batch is (B, F, C, H, W).
"""
import io
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

COLOURS = {"red": (0.92, 0.16, 0.14), "green": (0.15, 0.78, 0.22), "blue": (0.22, 0.38, 0.98),
           "yellow": (0.96, 0.86, 0.12), "purple": (0.68, 0.24, 0.86), "cyan": (0.12, 0.86, 0.88)}
SHAPES = ["circle", "square", "triangle"]
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
BACKGROUNDS = {"dark": 0.10, "grey": 0.42}      # brightness in [0, 1]
# held out of training: one (shape, direction) per colour, so every factor is still seen alone
HELD_OUT = {(c, SHAPES[i % 3], list(DIRECTIONS)[(i + i // 3) % 4]) for i, c in enumerate(COLOURS)}


@dataclass
class WorldConfig:
    size: int = 32                  # frame height = width in pixels
    frames: int = 8                 # frames per clip
    p_two: float = 0.2              # probability of a second object
    radius: tuple = (5.0, 7.0)      # object radius range in pixels
    speed: tuple = (1.0, 1.2)       # pixels per frame
    p_gradient: float = 0.5         # probability of a softly graded background
    wall_free: int = 8              # no wall along the motion in the first N frames (0 = start anywhere)
    centred: bool = True            # wall_free room on both sides, so the start does not reveal the direction
    scale: float = 1.0              # radius and speed multiplier: 2 draws the 32 px world's scenes at 64 px
    two_apart: bool = False         # two-object clips: both starts redrawn until the two never touch


# -----------------------------------------------------------------------------
# the procedural world

def world_of(ck):
    """The procedural world a checkpoint learnt from (students carry their teacher's), so that it is
    scored against that world's clips."""
    return WorldConfig(**ck["world"]) if "world" in ck else WorldConfig()


def draw(seed, cfg=WorldConfig(), split="train"):
    """Everything about one clip but its pixels, from its seed: caption, factors, the objects' looks and
    per-frame centres (F, n, 2), the background. split: 'train' avoids the held-out triples, 'heldout'
    draws only them, 'all' draws anything."""
    rng = np.random.default_rng(seed)
    S, T = cfg.size, cfg.frames
    n_obj = 2 if rng.random() < cfg.p_two else 1
    objects = []
    for k in range(n_obj):
        while True:
            colour = str(rng.choice(list(COLOURS)))
            shape, direction = str(rng.choice(SHAPES)), str(rng.choice(list(DIRECTIONS)))
            held = (colour, shape, direction) in HELD_OUT
            if k == 0 and ((split == "train" and held) or (split == "heldout" and not held)):
                continue
            if k == 1 and (split == "train" and held or colour == objects[0]["colour"]):
                continue
            break
        r = rng.uniform(*cfg.radius) * cfg.scale
        u = rng.uniform(size=2)                                   # the start, as a fraction of its range
        vel = np.array(DIRECTIONS[direction]) * rng.uniform(*cfg.speed) * cfg.scale
        # the start may leave room for wall_free frames of straight motion (a clip that bounces early
        # shows the opposite of its caption's direction); wall_free alone leaks the direction through
        # the start, centred does not
        travel = np.abs(vel) * max(0, min(cfg.wall_free, T) - 1)
        if cfg.centred:   # room both ways: otherwise a left-mover always starts on the right half (a leak)
            lo, hi = r + travel, S - r - travel
        else:
            lo, hi = r + np.where(vel < 0, travel, 0), S - r - np.where(vel > 0, travel, 0)
        lo, hi = np.where(lo < hi, lo, r), np.where(lo < hi, hi, S - r)   # no room: anywhere
        objects.append(dict(colour=colour, shape=shape, direction=direction, radius=r, pos=lo + (hi - lo) * u,
                            vel=vel, lo=lo, hi=hi))
    if cfg.two_apart and n_obj == 2:
        # a pixel between the discs of their radii in every frame of their straight paths: both starts are
        # redrawn from a stream of their own, so the caption and background stay the seed's
        a, b = objects
        rng_ab, t = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0]), np.arange(T)[:, None]
        for _ in range(200):
            gap = np.linalg.norm(a["pos"] - b["pos"] + t * (a["vel"] - b["vel"]), axis=1) - a["radius"] - b["radius"]
            if gap.min() >= 1:
                break
            for o in objects:
                o["pos"] = o["lo"] + (o["hi"] - o["lo"]) * rng_ab.uniform(size=2)
    background = str(rng.choice(list(BACKGROUNDS)))
    ramp = rng.uniform(0, 2 * np.pi) if rng.random() < cfg.p_gradient else None   # a soft +-0.08 ramp
    centres = np.empty((T, n_obj, 2), np.float32)
    for t in range(T):
        for k, o in enumerate(objects):
            centres[t, k] = o["pos"]
            o["pos"] = o["pos"] + o["vel"]
            for d in range(2):   # bounce: reflect the centre back inside [r, S - r]
                lo, hi = o["radius"], S - o["radius"]
                if not lo <= o["pos"][d] <= hi:
                    o["pos"][d] = 2 * (lo if o["pos"][d] < lo else hi) - o["pos"][d]
                    o["vel"][d] = -o["vel"][d]
    caption = " and ".join(f"a {o['colour']} {o['shape']} moving {o['direction']}" for o in objects)
    factors = dict(colours=[o["colour"] for o in objects], shapes=[o["shape"] for o in objects],
                   directions=[o["direction"] for o in objects], background=background)
    looks = [dict(colour=o["colour"], shape=o["shape"], radius=o["radius"]) for o in objects]
    return dict(caption=caption + f" on a {background} background", factors=factors, centres=centres,
                objects=looks, level=BACKGROUNDS[background], ramp=ramp)


def render(scenes, size, device="cpu"):
    """The pixels of drawn scenes, in one batch on `device`: (B, F, 3, size, size) in [-1, 1]. Each
    object is an anti-aliased coverage 0.5 - d (clipped to [0, 1]) from its signed distance d in pixels,
    painted over the background in order."""
    B, T, K = len(scenes), len(scenes[0]["centres"]), max(len(s["objects"]) for s in scenes)
    f32 = dict(dtype=torch.float32, device=device)
    yy, xx = torch.meshgrid(torch.arange(size, **f32) + 0.5, torch.arange(size, **f32) + 0.5, indexing="ij")
    angle = torch.tensor([s["ramp"] or 0.0 for s in scenes], **f32)[:, None, None]
    ramp = torch.tensor([s["ramp"] is not None for s in scenes], **f32)[:, None, None]
    level = torch.tensor([s["level"] for s in scenes], **f32)[:, None, None]
    base = level + ramp * 0.08 * ((xx - size / 2) * angle.cos() + (yy - size / 2) * angle.sin()) / (size / 2)
    frame = base[:, None, None].expand(B, T, 3, size, size)                              # (B, F, 3, H, W)
    for k in range(K):
        objs = [s["objects"][min(k, len(s["objects"]) - 1)] for s in scenes]
        present = torch.tensor([k < len(s["objects"]) for s in scenes], **f32)[:, None, None, None]
        centre = torch.from_numpy(np.stack([s["centres"][:, min(k, len(s["objects"]) - 1)] for s in scenes]))
        centre = centre.to(**f32)                                                          # (B, F, 2)
        r = torch.tensor([o["radius"] for o in objs], **f32)[:, None, None, None]
        shape = torch.tensor([SHAPES.index(o["shape"]) for o in objs], device=device)[:, None, None, None]
        dx, dy = xx - centre[..., 0, None, None], yy - centre[..., 1, None, None]          # (B, F, H, W)
        circle = (dx ** 2 + dy ** 2).sqrt() - r
        square = torch.maximum(dx.abs(), dy.abs()) - 0.82 * r
        dyt = dy - 0.15 * r     # triangle pointing up: the largest distance to its three edge lines
        triangle = torch.maximum(dyt, torch.maximum(-0.866 * dx - 0.5 * dyt, 0.866 * dx - 0.5 * dyt)) - 0.58 * r
        d = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))
        alpha = ((0.5 - d).clamp(0, 1) * present)[:, :, None]                               # (B, F, 1, H, W)
        colour = torch.tensor([COLOURS[o["colour"]] for o in objs], **f32)[:, None, :, None, None]
        frame = frame * (1 - alpha) + colour * alpha
    return frame.clamp(0, 1) * 2 - 1


def make_clip(seed, cfg=WorldConfig(), split="train"):
    """One clip from its seed: (video (F, 3, H, W) float32 numpy in [-1, 1], caption, factors, centres (F, n, 2))."""
    s = draw(seed, cfg, split)
    return render([s], cfg.size)[0].numpy(), s["caption"], s["factors"], s["centres"]


def make_batch(seeds, cfg=WorldConfig(), split="train", device="cpu"):
    """One clip per seed, rendered in one batch on `device`: (videos (B, F, 3, H, W), captions, factors,
    centres)."""
    scenes = [draw(seed, cfg, split) for seed in seeds]
    return render(scenes, cfg.size, device), [s["caption"] for s in scenes], [s["factors"] for s in scenes], \
        [s["centres"] for s in scenes]


def caption_parts(caption):
    """Each object of a caption naming several, alone: 'a X moving D and a Y moving E on a B background' ->
    ['a X moving D on a B background', 'a Y moving E on a B background']; [] for a caption of one object."""
    subject, on, place = caption.partition(" on a ")
    objects = subject.split(" and ")
    return [o + on + place for o in objects] if len(objects) > 1 else []


def all_captions():
    """Every caption the world can produce (one and two objects), to train the tokenizer on."""
    singles = [f"a {c} {s} moving {d}" for c in COLOURS for s in SHAPES for d in DIRECTIONS]
    return [f"{x} on a {b} background" for x in singles for b in BACKGROUNDS] + \
           [f"{singles[0]} and {x} on a dark background" for x in singles]


# -----------------------------------------------------------------------------
# real clips: a folder of clip.mp4|clip.gif with a clip.txt caption beside each

def fit(frames, size):
    """Frames (T, H, W, C) or (T, H, W) uint8 of any size -> (T, 3, size, size) in [-1, 1]: the shorter
    side area-resized to size, then centre-cropped (grey becomes RGB)."""
    frames = frames[..., None] if frames.ndim == 3 else frames
    x = torch.from_numpy(frames[..., :3].copy()).float().permute(0, 3, 1, 2) / 127.5 - 1
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="area")
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[:, :, top:top + size, left:left + size].clamp(-1, 1)


def load_image(path, size):
    """An image file of any size -> (3, size, size) in [-1, 1], as fit() does; ValueError if unreadable."""
    import imageio.v3 as iio
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such image")
    try:
        image = np.asarray(iio.imread(path))
    except Exception as e:
        raise ValueError(f"{path} is not a readable image ({type(e).__name__})")
    if image.ndim == 4:          # an animated image: its first frame
        image = image[0]
    if image.ndim not in (2, 3):
        raise ValueError(f"{path} is not an image (shape {image.shape})")
    return fit(image[None], size)[0]


class FolderClips:
    """Loads every clip of a folder once, resized (shorter side) and centre-cropped to size x size,
    its first `frames` frames (a shorter clip repeats its last frame)."""

    def __init__(self, path, cfg=WorldConfig()):
        import imageio.v3 as iio
        if not os.path.isdir(path):
            raise ValueError(f"--data={path}: no such folder")
        names = sorted(f for f in os.listdir(path) if f.lower().endswith((".mp4", ".gif")))
        self.videos, self.captions = [], []
        for name in names:
            txt = os.path.join(path, os.path.splitext(name)[0] + ".txt")
            if not os.path.exists(txt):
                continue
            x = fit(np.asarray(iio.imread(os.path.join(path, name), index=None)), cfg.size)[:cfg.frames]
            if len(x) < cfg.frames:                                                   # repeat the last frame
                x = torch.cat([x, x[-1:].expand(cfg.frames - len(x), -1, -1, -1)])
            self.videos.append(x)                                                     # (F, C, H, W)
            self.captions.append(open(txt).read().strip())
        if not self.videos:
            raise ValueError(f"--data={path}: no clip.mp4|clip.gif with a clip.txt caption beside it")

    def batch(self, seed, n):
        idx = np.random.default_rng(seed).integers(0, len(self.videos), size=n)
        return torch.stack([self.videos[i] for i in idx]), [self.captions[i] for i in idx]


# -----------------------------------------------------------------------------
# tokenizer: SentencePiece (word model) trained on the captions; its bytes go into every checkpoint

PAD, UNK, BOS = 0, 1, 2


def train_tokenizer(captions):
    """Train a word-level SentencePiece model on the captions; returns the serialised model bytes."""
    import sentencepiece as spm
    words = {w for c in captions for w in c.lower().split()}
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(list(captions) * 4), model_writer=buf,
                                   model_type="word", vocab_size=len(words) + 4, hard_vocab_limit=False,
                                   pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=3,
                                   normalization_rule_name="identity", minloglevel=2)
    return buf.getvalue()


class Tokenizer:
    """Captions -> (B, max_len) ids: BOS first, then the words, PAD after. The empty caption is
    BOS alone: the unconditional input for classifier-free guidance. Unseen words map to UNK."""

    def __init__(self, model_bytes, max_len=24):
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor(model_proto=bytes(model_bytes))
        self.model_bytes, self.max_len, self.vocab_size = bytes(model_bytes), max_len, self.sp.get_piece_size()

    def unknown_words(self, text):
        return [w for w in text.lower().split() if self.sp.piece_to_id("\u2581" + w) == UNK]

    def encode(self, texts):
        out = torch.full((len(texts), self.max_len), PAD, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [BOS] + self.sp.encode(text.lower().strip())
            if len(ids) > self.max_len:
                raise ValueError(f"caption has {len(ids) - 1} tokens, more than the {self.max_len - 1} "
                                 f"this model takes: {text!r}")
            out[i, :len(ids)] = torch.tensor(ids)
        return out


# -----------------------------------------------------------------------------

if __name__ == "__main__":
    import imageio.v3 as iio
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__.strip())
        sys.exit(0)
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    if "data" in args:
        clips = FolderClips(args["data"])
        print(f"{len(clips.videos)} clips, e.g. {clips.captions[0]!r}, shape {tuple(clips.videos[0].shape)}")
    else:
        videos, captions, _, _ = make_batch([[0, i] for i in range(16)])
        for c in captions:
            print(c)
        grid = videos.view(4, 4, *videos.shape[1:]).permute(2, 0, 4, 1, 5, 3).flatten(1, 2).flatten(2, 3)
        os.makedirs("out", exist_ok=True)
        iio.imwrite("out/world.gif", ((grid + 1) * 127.5).round().byte().numpy(), duration=125, loop=0)
        print("wrote out/world.gif")
