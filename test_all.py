"""
Tests: every one asserts something that fails if the code is wrong. CPU only, hermetic.

    python -m pytest -q test_all.py            # the default run (a few minutes on 2 cores)

Scripts are run the way users run them (subprocess, `torchrun` for DDP) on the `test` model size.
"""
import ast
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bench
import data
import distill
import eval as E
import kernels
import model as M
import sample
import teacher

PY = sys.executable
HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(args, check=True, timeout=600):
    p = subprocess.run([PY] + args, cwd=HERE, capture_output=True, text=True, env=ENV, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A test-size teacher, ODE init and one DMD/ASD iteration each, made by the real scripts."""
    d = str(tmp_path_factory.mktemp("run"))
    run(["teacher.py", "--model=test", "--steps=4", "--compile=false", f"--out={d}"])
    run(["distill.py", "--method=ode", f"--teacher={d}/teacher_ema.pt", f"--out={d}", "--steps=2",
         "--ode_pairs=8", "--batch=4"])
    for m in ("dmd", "asd"):
        run(["distill.py", f"--method={m}", f"--teacher={d}/teacher_ema.pt", f"--init={d}/ode.pt", f"--out={d}",
             "--steps=2", "--batch=2"])
    return d


def random_dit(**over):
    """A DiT with its zero-initialised (adaLN-Zero) layers randomised, so every path is exercised."""
    torch.manual_seed(0)
    net = M.DiT(M.model_config("test", vocab=24, **over))
    for p in net.parameters():
        if p.abs().sum() == 0:
            p.data.normal_(0, 0.1)
    return net


def ids_for(n, vocab=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, 24), generator=g)
    ids[:, 0], ids[:, 10:] = data.BOS, data.PAD
    return ids


# -----------------------------------------------------------------------------
# data

def test_world_is_deterministic_and_returns_factors():
    a, b = data.make_clip([5, 1]), data.make_clip([5, 1])
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], data.make_clip([5, 2])[0])
    video, caption, factors, centres = a
    assert video.shape == (8, 3, 32, 32) and video.min() >= -1 and video.max() <= 1
    assert centres.shape == (8, len(factors["colours"]), 2)
    for c, s, d in zip(factors["colours"], factors["shapes"], factors["directions"]):
        assert f"a {c} {s} moving {d}" in caption


def reference_pixels(scene, size):
    """The world's pixels painted the plain way, one frame and one object at a time in float64 numpy:
    what data.render must equal."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    base = np.full((size, size), scene["level"])
    if scene["ramp"] is not None:
        a = scene["ramp"]
        base = base + 0.08 * ((xx - size / 2) * np.cos(a) + (yy - size / 2) * np.sin(a)) / (size / 2)
    video = []
    for centres in scene["centres"]:
        frame = np.repeat(base[None], 3, axis=0)
        for o, (cx, cy) in zip(scene["objects"], centres):
            dx, dy, r = xx - cx, yy - cy, o["radius"]
            d = {"circle": np.sqrt(dx ** 2 + dy ** 2) - r, "square": np.maximum(np.abs(dx), np.abs(dy)) - 0.82 * r,
                 "triangle": np.max([dx * a + (dy - 0.15 * r) * b for a, b in [(0, 1), (-0.866, -0.5), (0.866, -0.5)]],
                                    axis=0) - 0.58 * r}[o["shape"]]
            alpha = np.clip(0.5 - d, 0, 1)
            frame = frame * (1 - alpha) + np.array(data.COLOURS[o["colour"]])[:, None, None] * alpha
        video.append(frame)
    return np.clip(np.stack(video), 0, 1) * 2 - 1


def test_batched_renderer_equals_the_plain_one():
    """data.render paints a whole batch at once (on any device); it equals the plain per-frame painter
    for both worlds, one and two objects, plain and graded backgrounds."""
    for world in (data.WorldConfig(p_two=0.5), data.WorldConfig(p_two=0.5, wall_free=0, speed=(1.0, 1.6), size=24)):
        scenes = [data.draw([8, i], world) for i in range(40)]
        videos = data.render(scenes, world.size)
        assert videos.shape == (40, world.frames, 3, world.size, world.size)
        assert {len(s["objects"]) for s in scenes} == {1, 2} and {s["ramp"] is None for s in scenes} == {True, False}
        for video, scene in zip(videos, scenes):
            assert np.abs(video.numpy() - reference_pixels(scene, world.size)).max() < 1e-5
    v, caption, factors, centres = data.make_clip([8, 3], world)
    assert np.array_equal(v, videos[3].numpy()) and caption == scenes[3]["caption"]


def test_world_scale_draws_the_same_scenes_at_twice_the_pixels():
    """scale=2 at 64 px (the tiny64 model's world) is the 32 px world's scene, every length doubled:
    same captions, centres exactly 2x, and its pixels 2x2-averaged are the 32 px pixels up to the edges'
    anti-aliasing, far closer than another seed's clip."""
    small, big = data.WorldConfig(p_two=0.5), data.WorldConfig(size=64, p_two=0.5, scale=2.0)
    x32, caps32, _, c32 = data.make_batch([[81, i] for i in range(24)], small)
    x64, caps64, _, c64 = data.make_batch([[81, i] for i in range(24)], big)
    assert caps32 == caps64 and all(np.allclose(2 * a, b, atol=1e-4) for a, b in zip(c32, c64))
    down = F.avg_pool2d(x64.flatten(0, 1), 2).view_as(x32)
    assert (down - x32).abs().mean() < 0.01 < (down - x32.roll(1, 0)).abs().mean() / 10
    assert (E.track(x64)[1] - 2 * E.track(x32)[1]).abs().mean() < 0.5     # pixels at 64 px


def test_p_two_sets_the_teachers_share_of_two_object_clips(tmp_path):
    """teacher.py --p_two reaches the world it trains on and that its checkpoint records."""
    run(["teacher.py", "--model=test", "--steps=1", "--compile=false", "--p_two=0.5", f"--out={tmp_path}"])
    ck = M.load_checkpoint(f"{tmp_path}/teacher_ema.pt", "teacher")
    assert data.world_of(ck).p_two == 0.5
    caps = data.make_batch([[0, 0, i] for i in range(200)], data.world_of(ck))[1]
    assert 0.4 < np.mean([" and " in c for c in caps]) < 0.6


def test_two_apart_keeps_the_captions_and_moves_the_pair_apart():
    """two_apart redraws only where a two-object clip's objects start: the same captions, backgrounds and
    one-object clips as the default world, and the two discs a pixel apart in every frame of nearly every
    clip, where the default world's touch in most."""
    plain, apart = data.WorldConfig(p_two=0.5), data.WorldConfig(p_two=0.5, two_apart=True)
    a, b = ([data.draw([82, i], w) for i in range(300)] for w in (plain, apart))
    assert [s["caption"] for s in a] == [s["caption"] for s in b] and [s["ramp"] for s in a] == [s["ramp"] for s in b]
    assert all(np.array_equal(x["centres"], y["centres"]) for x, y in zip(a, b) if len(x["objects"]) == 1)

    def apart_share(scenes):
        two = [s for s in scenes if len(s["objects"]) == 2]
        gap = [np.linalg.norm(s["centres"][:, 0] - s["centres"][:, 1], axis=-1) - sum(o["radius"] for o in s["objects"])
               for s in two]
        return len(two), np.mean([g.min() >= 1 - 1e-6 for g in gap])
    (n, share_a), (_, share_b) = apart_share(a), apart_share(b)
    assert n > 100 and share_a < 0.2 and share_b > 0.85


def test_teacher_init_starts_from_a_checkpoints_weights(tmp_path):
    """teacher.py --init fine-tunes from a checkpoint: at learning rate 0 its weights stay the
    checkpoint's (a fresh model's differ), --two_apart reaches the world it records, and the caption
    encoder layers --text_depth adds start as the identity: the deeper model's output is the checkpoint's."""
    run(["teacher.py", "--model=test", "--steps=2", "--compile=false", f"--out={tmp_path}/a"])
    run(["teacher.py", "--model=test", "--steps=1", "--compile=false", "--lr=0", f"--init={tmp_path}/a/teacher_ema.pt",
         "--two_apart=true", "--seed=1", f"--out={tmp_path}/b"])
    run(["teacher.py", "--model=test", "--steps=1", "--compile=false", "--lr=0", "--seed=1", f"--out={tmp_path}/c"])
    run(["teacher.py", "--model=test", "--steps=1", "--compile=false", "--lr=0", f"--init={tmp_path}/a/teacher_ema.pt",
         "--text_depth=2", f"--out={tmp_path}/d"])
    a, b, c, d = (M.load_checkpoint(f"{tmp_path}/{d}/teacher_ema.pt", "teacher") for d in "abcd")
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert not all(torch.equal(a["ema"][k], c["ema"][k]) for k in a["ema"])
    assert data.world_of(b).two_apart and not data.world_of(a).two_apart
    assert d["model_cfg"]["text_depth"] == 2 and any(k.startswith("text.1.") for k in d["ema"])
    torch.manual_seed(0)
    net_a, net_d = M.build_model(a), M.build_model(d)
    for p in net_a.parameters():   # random weights everywhere, so the caption reaches the output
        p.data.normal_(0, 0.1)
    net_d.load_state_dict({**net_a.state_dict(), **{k: v for k, v in d["ema"].items() if k.startswith("text.1.")}})
    x, sigma, ids = torch.randn(2, 4, 3, 16, 16), torch.rand(2, 4), ids_for(2, a["model_cfg"]["vocab"])
    assert torch.allclose(net_a(x, sigma, ids), net_d(x, sigma, ids), atol=1e-5)
    assert not torch.allclose(net_a(x, sigma, ids), net_a(x, sigma, ids_for(2, a["model_cfg"]["vocab"], seed=1)))
    p = run(["teacher.py", "--model=test", "--steps=1", "--compile=false", f"--init={tmp_path}/d/teacher_ema.pt",
             f"--out={tmp_path}/e"], check=False)
    assert p.returncode != 0 and "text_depth=2 (now 1)" in p.stderr     # layers are added, never dropped


def test_world_motion_follows_caption():
    """The object's centre moves in the captioned direction (before any bounce)."""
    for i in range(40):
        video, caption, f, centres = data.make_clip([9, i], data.WorldConfig(frames=3, wall_free=0))
        dx, dy = centres[1, 0] - centres[0, 0]
        d = f["directions"][0]
        assert {"left": dx < 0, "right": dx > 0, "up": dy < 0, "down": dy > 0}[d] or \
            np.allclose(centres[2, 0], centres[0, 0], atol=3.5), caption   # (a bounce at frame 1)


def test_world_no_wall_in_first_frames():
    """With wall_free=8 every clip moves straight in its captioned direction for 8 frames."""
    unit = {k: np.array(v) for k, v in data.DIRECTIONS.items()}
    for i in range(60):
        _, caption, f, centres = data.make_clip([10, i], data.WorldConfig(frames=8, wall_free=8))
        for k, d in enumerate(f["directions"]):
            steps = np.diff(centres[:, k], axis=0) @ unit[d]
            assert (steps >= 0.99).all(), caption


def test_heldout_triples_never_in_training_split():
    for i in range(300):
        _, _, f, _ = data.make_clip([1, i], data.WorldConfig(frames=1), split="train")
        assert all(t not in data.HELD_OUT for t in zip(f["colours"], f["shapes"], f["directions"]))
        _, _, f, _ = data.make_clip([2, i], data.WorldConfig(frames=1), split="heldout")
        assert (f["colours"][0], f["shapes"][0], f["directions"][0]) in data.HELD_OUT


def test_tokenizer_roundtrip_unknown_words_and_length():
    tok = data.Tokenizer(data.train_tokenizer(data.all_captions()), max_len=12)
    ids = tok.encode(["a red circle moving left", ""])
    assert ids[0, 0] == data.BOS and (ids[0, 1:6] > data.BOS).all() and (ids[0, 6:] == data.PAD).all()
    assert ids[1, 0] == data.BOS and (ids[1, 1:] == data.PAD).all()           # empty = unconditional
    assert tok.sp.decode(ids[0, 1:6].tolist()) == "a red circle moving left"
    assert tok.encode(["a zorg circle"])[0, 2] == data.UNK and tok.unknown_words("a zorg circle") == ["zorg"]
    with pytest.raises(ValueError):
        tok.encode([" ".join(["red"] * 20)])


def test_folder_loader_reads_mp4_and_gif(tmp_path):
    import imageio.v3 as iio
    rng = np.random.default_rng(0)
    clip = (rng.random((10, 48, 64, 3)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "a.mp4", clip, fps=8, codec="libx264", macro_block_size=1)
    (tmp_path / "a.txt").write_text("a red circle moving left\n")
    iio.imwrite(tmp_path / "b.gif", clip[:3], duration=100, loop=0)
    (tmp_path / "b.txt").write_text("a blue square moving up")
    iio.imwrite(tmp_path / "c.gif", clip[:3], duration=100)                  # no caption: skipped
    clips = data.FolderClips(str(tmp_path), data.WorldConfig(size=32, frames=6))
    assert clips.captions == ["a red circle moving left", "a blue square moving up"]
    assert all(v.shape == (6, 3, 32, 32) for v in clips.videos)
    assert torch.equal(clips.videos[1][3], clips.videos[1][2])             # short clip: last frame repeated
    # the gif's first frame, resized: close to a direct area-resize of the source
    ref = F.interpolate(torch.from_numpy(clip[:1]).float().permute(0, 3, 1, 2) / 127.5 - 1, size=(32, 43), mode="area")
    assert (clips.videos[1][0] - ref[0, :, :, 5:37]).abs().mean() < 0.05
    videos, caps = clips.batch(0, 5)
    assert videos.shape == (5, 6, 3, 32, 32) and len(caps) == 5
    with pytest.raises(ValueError):
        data.FolderClips(str(tmp_path / "nothing"))


# -----------------------------------------------------------------------------
# model

def test_flow_conversions_roundtrip():
    x0, eps = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    sigma = torch.rand(2, 4) * 0.98 + 0.01
    x = M.add_noise(x0, eps, sigma)
    v = eps - x0
    assert torch.allclose(M.v_to_x0(x, v, sigma), x0, atol=1e-5)
    assert torch.allclose(M.x0_to_v(x, x0, sigma), v, atol=1e-4)
    s = M.few_step_sigmas(4, 5.0)
    assert np.allclose(s, [1.0, 0.9375, 0.8333333, 0.625])          # Self Forcing's warped list at shift 5


def test_causal_model_does_not_see_the_future():
    net = random_dit(causal=True, frames_per_block=1)
    x, sigma, ids = torch.randn(2, 4, 3, 16, 16), torch.rand(2, 4), ids_for(2)
    out = net(x, sigma, ids)
    for b in range(3):
        x2, s2 = x.clone(), sigma.clone()
        x2[:, b + 1:] += torch.randn_like(x2[:, b + 1:])
        s2[:, b + 1:] = torch.rand_like(s2[:, b + 1:])
        out2 = net(x2, s2, ids)
        assert torch.equal(out[:, :b + 1], out2[:, :b + 1])
        assert (out[:, b + 1:] - out2[:, b + 1:]).abs().max() > 1e-3


def test_bidirectional_model_sees_the_future():
    net = random_dit(causal=False)
    x, sigma, ids = torch.randn(2, 4, 3, 16, 16), torch.rand(2, 4), ids_for(2)
    x2 = x.clone()
    x2[:, 3] += 1
    assert (net(x, sigma, ids)[:, 0] - net(x2, sigma, ids)[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("fpb", [1, 2])
def test_kv_cache_equals_full_masked_forward(fpb):
    net = random_dit(causal=True, frames_per_block=fpb)
    x, sigma, ids = torch.randn(2, 4, 3, 16, 16), torch.rand(2, 4), ids_for(2)
    full = net(x, sigma, ids)
    cache, outs = net.new_cache(), []
    cache.write = True
    for b in range(4 // fpb):
        outs.append(net(x[:, b * fpb:(b + 1) * fpb], sigma[:, b * fpb:(b + 1) * fpb], ids, cache=cache))
    assert (torch.cat(outs, 1) - full).abs().max() <= 1e-5


def test_rolling_cache_keeps_window_and_streams():
    net = random_dit(causal=True, frames_per_block=1)
    sig = M.few_step_sigmas(4, 2.0)
    video = M.rollout(net, torch.randn(1, 12, 3, 16, 16), ids_for(1), M.block_schedules(12, 1, 4, sig), window=3)
    assert video.shape == (1, 12, 3, 16, 16) and torch.isfinite(video).all()
    cache = net.new_cache(window=3)
    cache.write = True
    for b in range(6):
        net(torch.randn(1, 1, 3, 16, 16), torch.zeros(1, 1), ids_for(1), cache=cache)
    assert cache.k[0].shape[2] == 3 * 16 and cache.frames == 6


def test_rollout_gradient_only_through_exit_forwards():
    """Self Forcing: only each block's exit forward is differentiable; earlier denoising steps and
    every commit pass run without grad, and the cached context holds no graph."""
    net = random_dit(causal=True, frames_per_block=1)
    calls = []
    hook = net.register_forward_hook(lambda m, args, kwargs, out: calls.append(
        (torch.is_grad_enabled(), args[0].requires_grad, kwargs.get("cache"))), with_kwargs=True)
    sig = M.few_step_sigmas(4, 2.0)
    x = M.rollout(net, torch.randn(2, 4, 3, 16, 16), ids_for(2), M.block_schedules(4, 3, sigmas=sig), grad=True)
    hook.remove()
    grad_calls = [c for c in calls if c[0]]
    assert len(calls) == 4 * 3 + 3 and len(grad_calls) == 4            # 3 steps per block, commits but the last
    assert not any(c[1] for c in calls)                                # inputs never carry a graph
    cache = calls[-1][2]
    assert all(not k.requires_grad for k in cache.k) and cache.frames == 3
    x.sum().backward()
    assert all(p.grad is not None for p in net.blocks.parameters())


# -----------------------------------------------------------------------------
# kernels

def test_flex_block_causal_attention_matches_reference():
    q, k, v = (torch.randn(2, 2, 256, 16) for _ in range(3))
    ref = kernels.block_causal_attention_ref(q, k, v, 64)
    assert (kernels.block_causal_attention_flex(q, k, v, 64) - ref).abs().max() <= 1e-5
    # the reference itself: a block-causal mask by hand
    mask = torch.tensor([[j // 64 <= i // 64 for j in range(256)] for i in range(256)])
    assert torch.allclose(ref, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6)


def test_rope_rotates_pairs():
    q, a = torch.randn(2, 2, 64, 16), torch.rand(64, 8) * 6
    out = kernels.rope(q, a.cos(), a.sin())
    pairs = lambda t: t.unflatten(-1, (8, 2))
    assert torch.allclose(pairs(out).norm(dim=-1), pairs(q).norm(dim=-1), atol=1e-5)   # each pair keeps its norm
    assert torch.allclose(kernels.rope(q, torch.ones(64, 8), torch.zeros(64, 8)), q)    # angle 0: identity


def test_position_buffers_and_gelu_forms_equal_their_references():
    net = random_dit(causal=True, frames_per_block=1)
    cfg, g, n = net.cfg, net.grid, net.grid ** 2
    for f in range(cfg.frames):                    # the buffers hold the tables of the trained frames
        cos, sin = M.rope_tables(1, g, g, cfg.dim // cfg.heads, f)
        assert torch.equal(net.rope_cos[f * n:(f + 1) * n], cos) and torch.equal(net.rope_sin[f * n:(f + 1) * n], sin)
    assert torch.equal(net.pos_table, M.abs_positions(cfg.frames, g, g, cfg.dim))
    assert "pos_table" not in net.state_dict()     # not saved: old checkpoints load as before
    long = net(torch.randn(1, 2 * cfg.frames, 3, 16, 16), torch.rand(1, 2 * cfg.frames), ids_for(1))
    assert long.shape[1] == 2 * cfg.frames         # past the buffers: tables built per call
    x = (torch.randn(1000) * 4).requires_grad_(True)
    a, b = kernels.gelu_sigmoid_form(x), F.gelu(x, approximate="tanh")
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    assert (a - b).abs().max() < 1e-5 and (ga - gb).abs().max() < 1e-5


def test_cross_attention_written_out_equals_sdpa():
    q, k, v = (torch.randn(2, 2, 40, 16, requires_grad=True) for _ in range(3))
    k, v = k[:, :, :6], v[:, :, :6]
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4])     # the second caption has 2 real tokens
    outs = [f(q, k, v, mask) for f in (kernels.cross_attention_written_out, kernels.cross_attention)]
    grads = [torch.autograd.grad((o * o).sum(), (q, k, v)) for o in outs]
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()
    assert rel(*outs) < 1e-5 and all(rel(a, b) < 1e-5 for a, b in zip(*grads))
    assert grads[0][1][1, :, 2:].abs().max() == 0                  # padding tokens get no gradient


def test_cache_attention_equals_masked_attention():
    q, k, v = (torch.randn(1, 2, 96, 16) for _ in range(3))
    full = kernels.block_causal_attention_ref(q, k, v, 32)
    last = kernels.cache_attention(q[:, :, 64:], k[:, :, 64:], v[:, :, 64:], k[:, :, :64], v[:, :, :64])
    assert (last - full[:, :, 64:]).abs().max() <= 1e-5


# -----------------------------------------------------------------------------
# teacher training: resume and DDP

def test_teacher_resume_is_exact(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = ["teacher.py", "--model=test", "--steps=4", "--compile=false", "--save_every=1", "--warmup=2"]
    run(common + [f"--out={a}"])
    run(common + [f"--out={b}", "--stop_at=2"])
    assert torch.load(f"{b}/teacher.pt", weights_only=True)["step"] == 2
    run(common + [f"--out={b}", "--resume=true"])
    ca, cb = (torch.load(f"{d}/teacher.pt", weights_only=True) for d in (a, b))
    assert cb["step"] == 4
    for key in ("model", "ema"):
        for name in ca[key]:
            assert torch.allclose(ca[key][name], cb[key][name], atol=1e-6), name


def test_teacher_batch_noise_levels_per_video_or_per_frame():
    """frame_noise=0: one level per video; =1: independent levels per frame; the rank slices of a
    global batch are the rows of the whole batch (same draws whatever the number of ranks)."""
    tok = data.Tokenizer(data.train_tokenizer(data.all_captions()))
    wcfg = data.WorldConfig(size=16, frames=4)
    for p, per_frame in ((0.0, False), (1.0, True)):
        cfg = teacher.TrainConfig(model="test", batch=16, frame_noise=p, first_clean=0.0)
        sigma = teacher.get_batch(cfg, wcfg, tok, 3, 0, 16)[3]
        assert sigma.shape == (16, 4) and 0 <= sigma.min() and sigma.max() <= 1
        assert (sigma.std(dim=1) > 1e-3).all().item() == per_frame and (sigma.std(dim=1) > 1e-3).any().item() == per_frame
        assert torch.equal(teacher.get_batch(cfg, wcfg, tok, 3, 4, 8)[3], sigma[4:8])


def test_first_clean_frame_is_context_without_loss():
    """first_clean=1: every video's first frame is given clean (sigma 0) and the loss ignores it:
    whatever the network outputs there, the loss is the mean over the other frames only."""
    tok = data.Tokenizer(data.train_tokenizer(data.all_captions()))
    cfg = teacher.TrainConfig(model="test", batch=4, first_clean=1.0)
    x0, ids, eps, sigma = teacher.get_batch(cfg, data.WorldConfig(size=16, frames=4), tok, 0, 0, 4)
    assert (sigma[:, 0] == 0).all() and (sigma[:, 1:] > 0).all()
    net = random_dit()
    poke = lambda x, s, t: net(x, s, t) + 1e3 * (torch.arange(4) == 0).float()[None, :, None, None, None]
    loss, poked = teacher.flow_loss(net, x0, ids, eps, sigma), teacher.flow_loss(poke, x0, ids, eps, sigma)
    assert torch.allclose(loss, poked)
    target = (net(M.add_noise(x0, eps, sigma), sigma, ids) - (eps - x0)).pow(2)[:, 1:].mean()
    assert torch.allclose(loss, target, atol=1e-6)


def test_centred_start_does_not_reveal_the_direction():
    """wall_free alone starts a left-mover on the right (the start leaks the caption's direction);
    centred leaves room both ways: no bounce, and left- and right-movers start alike."""
    def start_gap(centred):
        cfg = data.WorldConfig(frames=8, wall_free=8, centred=centred, speed=(1.0, 1.2), p_two=0)
        x = {"left": [], "right": []}
        for i in range(200):
            _, _, f, c = data.make_clip([12, i], cfg)
            d = f["directions"][0]
            if d in x:
                x[d].append(c[0, 0, 0])
                assert np.all(np.diff(c[:, 0], axis=0) @ np.array(data.DIRECTIONS[d]) >= 0.99)
        return np.mean(x["left"]) - np.mean(x["right"])
    assert start_gap(False) > 4 and abs(start_gap(True)) < 1.5


def test_students_carry_their_teachers_world(tiny_run):
    """eval.py scores a model against clips of the world its teacher learnt: the teacher saves its
    world, the ODE init and both students inherit it."""
    w = data.world_of(torch.load(f"{tiny_run}/teacher_ema.pt", weights_only=True))
    assert w.centred and w.wall_free == 8 and w.speed == (1.0, 1.2) and w.size == 16   # the defaults, test size
    for f in ("ode.pt", "dmd_ema.pt", "asd_ema.pt"):
        assert data.world_of(torch.load(f"{tiny_run}/{f}", weights_only=True)) == w, f


def free_port():
    """A port no process listens on now (the OS picks it), instead of a random guess that can collide."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_grads(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    M.setup("cpu", 0)
    cfg = teacher.TrainConfig(model="test", batch=4)
    wcfg = data.WorldConfig(size=16, frames=4)
    tok = data.Tokenizer(data.train_tokenizer(data.all_captions()))
    torch.manual_seed(0)
    net = M.DiT(M.model_config("test", vocab=tok.vocab_size))
    micro = cfg.batch // world
    x0, ids, eps, sigma = teacher.get_batch(cfg, wcfg, tok, 0, rank * micro, (rank + 1) * micro)
    fwd = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    loss = teacher.flow_loss(fwd, x0, ids, eps, sigma)
    loss.backward()
    loss_t = loss.detach().clone()
    if world > 1:
        torch.distributed.all_reduce(loss_t)
        loss_t /= world
    if rank == 0:
        torch.save(dict(loss=loss_t, grads={n: p.grad for n, p in net.named_parameters()}), out)
    M.teardown()   # with two ranks this ends the process (model.teardown)


def test_ddp_two_ranks_equal_one_process_with_double_batch(tmp_path):
    port = free_port()
    torch.multiprocessing.spawn(_ddp_grads, args=(2, port, str(tmp_path / "ddp.pt")), nprocs=2)
    _ddp_grads(0, 1, port, str(tmp_path / "one.pt"))
    a, b = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "one.pt")
    assert torch.allclose(a["loss"], b["loss"], atol=1e-6)
    for n in a["grads"]:
        assert torch.allclose(a["grads"][n], b["grads"][n], atol=1e-6, rtol=1e-4), n


def test_torchrun_teacher_and_distill(tmp_path, tiny_run):
    d = str(tmp_path)
    torchrun = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for args in (["teacher.py", "--model=test", "--steps=2", "--compile=false", f"--out={d}"],
                 ["distill.py", f"--teacher={tiny_run}/teacher_ema.pt", f"--init={tiny_run}/ode.pt",
                  f"--out={d}", "--steps=2", "--batch=2"]):
        p = subprocess.run(torchrun + args, cwd=HERE, capture_output=True, text=True, env=ENV, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
    assert torch.load(f"{d}/teacher.pt", weights_only=True)["step"] == 2
    assert torch.load(f"{d}/asd.pt", weights_only=True)["step"] == 2


def test_teardown_ends_a_distributed_process(tmp_path):
    """A multi-rank run ends in model.teardown, not at the interpreter's shutdown (where a gloo rank
    was sometimes aborted after its work was done); a process without a process group goes on."""
    code = ("import os, sys, torch, model as M; M.teardown(); open(sys.argv[1] + '.plain', 'w').close(); "
            "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=sys.argv[2], RANK='0', WORLD_SIZE='1'); "
            "torch.distributed.init_process_group('gloo'); print('flushed'); M.teardown(); "
            "open(sys.argv[1] + '.after', 'w').close()")
    p = subprocess.run([PY, "-c", code, str(tmp_path / "t"), str(free_port())], cwd=HERE, capture_output=True,
                       text=True, env={**ENV, "PYTHONUNBUFFERED": ""}, timeout=120)   # stdout a buffered pipe
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "flushed"              # stdout is flushed before the process ends
    assert os.path.exists(tmp_path / "t.plain") and not os.path.exists(tmp_path / "t.after")


def _exit_steps(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    M.setup("cpu", 0)
    mine = [random.Random(100 * rank + i).randint(1, 4) for i in range(20)]   # rank-dependent draws
    shared = [M.broadcast_int(n, torch.device("cpu")) for n in mine]
    torch.save(dict(mine=mine, shared=shared), f"{out}.{rank}")
    M.teardown()


def test_exit_step_identical_across_ranks(tmp_path):
    port = free_port()
    torch.multiprocessing.spawn(_exit_steps, args=(2, port, str(tmp_path / "e")), nprocs=2)
    r0, r1 = (torch.load(f"{tmp_path}/e.{r}") for r in (0, 1))
    assert r0["mine"] != r1["mine"]                   # the ranks' own draws differ ...
    assert r0["shared"] == r1["shared"] == r0["mine"]  # ... and rank 0's is used by both
    assert M.broadcast_int(3, torch.device("cpu")) == 3   # a no-op without a process group


# -----------------------------------------------------------------------------
# distillation: losses and which parameters each update touches

class Gaussian2D(torch.nn.Module):
    """An exact denoiser for x0 ~ N(mu, I) under x = (1-s) x0 + s eps, shaped like a DiT."""

    def __init__(self, mu):
        super().__init__()
        self.mu, self.cfg = torch.tensor(mu).view(1, 1, 2, 1, 1), M.ModelConfig(shift=1.0)

    def encode_text(self, ids):
        return ids

    def forward(self, x, sigma, text):
        s = sigma[..., None, None, None]
        x0 = self.mu + (1 - s) / ((1 - s) ** 2 + s ** 2) * (x - (1 - s) * self.mu)
        return (x - x0) / s


def test_dmd_gradient_points_from_fake_toward_real():
    real, fake = Gaussian2D([2.0, 0.0]), Gaussian2D([-1.0, 1.0])
    cfg = distill.DistillConfig(real_cfg=1.0)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(256, 1, 2, 1, 1, generator=g) + fake.mu).requires_grad_(True)   # samples of the fake
    ids = torch.zeros(256, 1)
    distill.dmd_loss(x, real, fake, ids, ids, cfg, g).backward()
    step = -x.grad.mean(0).flatten()                   # the direction gradient descent moves samples
    want = (real.mu - fake.mu).flatten()
    assert F.cosine_similarity(step, want, dim=0) > 0.95


def test_hinge_losses_textbook_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert distill.hinge_d_loss(real, fake).item() == pytest.approx(0.25 + 0.75)   # relu(1-D(r)) + relu(1+D(f))
    assert distill.hinge_d_loss(torch.tensor([1.0]), torch.tensor([-1.0])).item() == 0.0
    assert distill.hinge_g_loss(torch.tensor([0.5, -1.5])).item() == pytest.approx(0.5)
    assert distill.rpgan_d_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(np.log(2))


def _teacher_and_tokenizer(tiny_run):
    tck = M.load_checkpoint(f"{tiny_run}/teacher_ema.pt", "teacher")
    tch = M.build_model(tck).requires_grad_(False)
    return tch, data.Tokenizer(bytes(tck["tokenizer"].tolist()), max_len=tch.cfg.text_len)


def _sf_state(tiny_run, method):
    tch, tok = _teacher_and_tokenizer(tiny_run)
    cfg = distill.DistillConfig(method=method, batch=2, lr_d=1e-2, lr=1e-3)
    s = distill.build_sf(cfg, 1, torch.device("cpu"), tch, M.load_checkpoint(f"{tiny_run}/ode.pt", "student"))
    ids, ids_u = tok.encode(distill.captions([0, 7, 0], range(2))), tok.encode(["", ""])
    return s, ids, ids_u


def snapshot(*mods):
    return [p.detach().clone() for m in mods for p in m.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_discriminator_step_changes_only_the_head(tiny_run):
    s, ids, _ = _sf_state(tiny_run, "asd")
    g0, f0, h0 = snapshot(s.G), snapshot(s.fake), snapshot(s.head)
    g = torch.Generator().manual_seed(0)
    x_n, x_n1 = (distill.student_rollout(s, n, ids, g, grad=False) for n in (2, 3))
    for loss in ("rpgan", "hinge"):
        s.cfg.d_loss = loss
        h = snapshot(s.head)
        stats = distill.discriminator_step(s, 2, x_n, x_n1, ids, g)
        assert not same(h, snapshot(s.head)) and np.isfinite(stats["loss_d"])
    assert same(g0, snapshot(s.G)) and same(f0, snapshot(s.fake)) and not same(h0, snapshot(s.head))
    assert distill.d_logits(s.fake, s.head, x_n, distill.d_sigma(s, g), torch.randn_like(x_n), ids, 2).shape == (2,)
    s.cfg.d_sigma_max = 0.0                                       # D sees its inputs clean
    assert not distill.d_sigma(s, g).any() and distill.d_sigma(s, g).shape == (2, s.mc.frames)
    assert np.isfinite(distill.discriminator_step(s, 2, x_n, x_n1, ids, g)["loss_d"])


def test_generator_step_leaves_fake_score_and_discriminator_unchanged(tiny_run):
    s, ids, ids_u = _sf_state(tiny_run, "asd")
    g0, f0, h0, t0 = snapshot(s.G), snapshot(s.fake), snapshot(s.head), snapshot(s.teacher)
    stats = distill.generator_step(s, 1, ids, ids_u, torch.Generator().manual_seed(0))
    assert "loss_asd" in stats                                    # n=1 < N: the ASD term was used
    assert not same(g0, snapshot(s.G))
    assert same(f0, snapshot(s.fake)) and same(h0, snapshot(s.head)) and same(t0, snapshot(s.teacher))
    assert all(p.grad is None for p in list(s.fake.parameters()) + list(s.head.parameters()))
    s.cfg.d_loss, s.cfg.d_pair = "hinge", False       # the design's hinge D on independent samples
    g1 = snapshot(s.G)
    assert "loss_asd" in distill.generator_step(s, 2, ids, ids_u, torch.Generator().manual_seed(1))
    assert not same(g1, snapshot(s.G)) and same(f0, snapshot(s.fake)) and same(h0, snapshot(s.head))
    s.cfg.alpha = "0.3,0,0"                           # per-n weights: the ASD term is off at n = 2
    assert distill.asd_weight(s.cfg, 1) == 0.3 and distill.asd_weight(distill.DistillConfig(alpha="0.2"), 3) == 0.2
    assert distill.generator_step(s, 1, ids, ids_u, torch.Generator().manual_seed(2))["g_asd"] > 0
    assert distill.generator_step(s, 2, ids, ids_u, torch.Generator().manual_seed(3))["g_asd"] == 0
    assert "loss_asd" not in distill.generator_step(s, s.N, ids, ids_u, torch.Generator().manual_seed(4))


def test_fake_step_changes_only_the_fake_score(tiny_run):
    s, ids, _ = _sf_state(tiny_run, "dmd")
    g0, f0 = snapshot(s.G), snapshot(s.fake)
    g = torch.Generator().manual_seed(0)
    distill.fake_step(s, distill.student_rollout(s, 2, ids, g, grad=False), ids, g)
    assert same(g0, snapshot(s.G)) and not same(f0, snapshot(s.fake))


def test_distill_resume_after_kill_9(tmp_path, tiny_run):
    """kill -9 mid-run, --resume: the result equals an uninterrupted run (nothing lost beyond the
    last checkpoint, which is written atomically)."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = ["distill.py", f"--teacher={tiny_run}/teacher_ema.pt", f"--init={tiny_run}/ode.pt",
              "--steps=8", "--batch=2", "--save_every=2", "--ratio=2"]
    run(common + [f"--out={a}"])
    p = subprocess.Popen([PY] + common + [f"--out={b}"], cwd=HERE, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(f"{b}/asd.pt"):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    step = torch.load(f"{b}/asd.pt", weights_only=True)["step"]
    assert 2 <= step < 8
    run(common + [f"--out={b}", "--resume=true"])
    ca, cb = (torch.load(f"{d}/asd.pt", weights_only=True) for d in (a, b))
    for key in ("G", "G_ema", "fake", "head"):
        for name in ca[key]:
            assert torch.allclose(ca[key][name], cb[key][name], atol=1e-6), (key, name)


# -----------------------------------------------------------------------------
# scripts: sampling and clear one-line errors on bad input

def test_sample_writes_videos_with_ffe_labels(tmp_path, tiny_run):
    import imageio.v3 as iio
    for args, label in ((["--steps", "1"], "1star"), (["--steps=2", "--ffe=false"], "2"), (["--steps=4", "--frames=8"], "4")):
        p = run(["sample.py", f"--ckpt={tiny_run}/asd_ema.pt", f"--out={tmp_path}", "--n=2"] + args)
        assert "latency to first frame" in p.stdout and "frames/s" in p.stdout
        frames = iio.imread(tmp_path / f"sample_{label}.mp4", index=None)     # decodable h264
        assert frames.shape[0] == (8 if label == "4" else 4)
        assert (tmp_path / f"sample_{label}.png").exists() and (tmp_path / f"sample_{label}.gif").exists()
    run(["sample.py", f"--ckpt={tiny_run}/teacher_ema.pt", f"--out={tmp_path}", "--n=1", "--steps=4"])
    assert (tmp_path / "sample_teacher4.png").exists()


def test_sample_compiled_equals_eager(tmp_path, tiny_run):
    import imageio.v3 as iio
    common = ["sample.py", f"--ckpt={tiny_run}/asd_ema.pt", "--n=2", "--steps=1", "--ffe=false"]
    run(common + [f"--out={tmp_path / 'eager'}"])
    run(common + [f"--out={tmp_path / 'compiled'}", "--compile=true"])
    a, b = (iio.imread(tmp_path / d / "sample_1.png").astype(int) for d in ("eager", "compiled"))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1 and a.std() > 5, np.abs(a - b).max()   # uint8 rounding


@pytest.mark.parametrize("args,message", [
    (["sample.py", "--bogus=1"], "unknown option --bogus"),
    (["sample.py", "--steps=two"], "not a valid int"),
    (["teacher.py", "--lr=fast"], "not a valid float"),
    (["distill.py", "--nonsense=3"], "unknown option"),
    (["sample.py", "--ckpt=/no/such/file.pt"], "not found"),
    (["sample.py", "--prompt="], "prompt is empty"),
    (["sample.py", "--prompt=" + " ".join(["red"] * 40)], "more than"),
    (["sample.py", "--first_frame=/no/such/image.png"], "no such image"),
    (["sample.py", "--first_frame=test_all.py"], "not a readable image"),
    (["sample.py", "--ckpt=ckpt/asd_tiny.pt", "--switch=3:a red circle moving left on a dark background"],
     "multiple of the block size"),
    (["sample.py", "--switch=0:a red circle moving left on a dark background"], "inside the video"),
    (["sample.py", "--switch=12:a red circle moving left on a dark background", "--frames=8"], "inside the video"),
    (["sample.py", "--switch=4: "], "non-empty caption"),
    (["sample.py", "--switch=a red circle"], "FRAME:caption"),
])
def test_bad_input_gives_one_line_error(args, message, tiny_run):
    args = [a.replace("CKPT", tiny_run) for a in args]
    if args[0] == "sample.py" and not any(a.startswith("--ckpt") for a in args):
        args.append(f"--ckpt={tiny_run}/asd_ema.pt")
    p = run(args, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path, tiny_run):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    for args, message in ((["sample.py", f"--ckpt={bad}"], "not a readable checkpoint"),
                          (["distill.py", f"--teacher={tiny_run}/asd_ema.pt"], "expected teacher"),
                          # resuming with another model config
                          (["teacher.py", "--model=tiny", f"--out={tiny_run}", "--resume=true", "--compile=false"],
                           "another model config")):
        p = run(args, check=False)
        assert p.returncode != 0 and "Traceback" not in p.stderr and message in p.stderr, p.stderr


def test_unknown_words_are_handled(tiny_run, tmp_path):
    p = run(["sample.py", f"--ckpt={tiny_run}/asd_ema.pt", "--prompt=a chartreuse circle moving left",
             "--n=1", f"--out={tmp_path}"])
    assert "chartreuse" in p.stdout and "wrote" in p.stdout


# -----------------------------------------------------------------------------
# eval.py: the scorecard measures what it claims

N = 132   # one pass over the 132 training captions


def run_eval(args, check=True):
    p = subprocess.run([PY, "eval.py"] + args, cwd=HERE, capture_output=True, text=True, env=ENV, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    """(evaluator dict, path): the shipped one, or one trained here and saved with its measured gates."""
    path = os.path.join(HERE, "ckpt", "evaluator.pt")
    if os.path.exists(path):
        return E.load_evaluator(path), path
    ev = E.train_evaluator(steps=300)
    ev["gates"] = E.gate_accuracies(ev, n=256)
    path = str(tmp_path_factory.mktemp("ev") / "evaluator.pt")
    M.save_checkpoint(dict(kind="evaluator", frame=ev["frame"].state_dict(), clip=ev["clip"].state_dict(),
                           size=ev["size"], frames=ev["frames"], gates=ev["gates"]), path)
    return ev, path


@pytest.fixture(scope="module")
def world(evaluator):
    """The fixed prompts with 3 real sets: 0 = FD reference, 1 = ceiling (and its anchors), 2 = a fresh real set."""
    ev = evaluator[0]
    prompts = E.prompt_grid(N, reps=3)
    return dict(prompts=prompts, ref=E.reference(ev, prompts), real2=E.real_videos(prompts, 32, 8, which=2),
                real1=E.real_videos(prompts, 32, 8, which=1))


def card(evaluator, world, videos):
    return E.scorecard(E.score_videos(evaluator[0], videos, world["prompts"]), world["ref"], boot_fd=5)


def tiny_checkpoint(path, causal=True, size=32, frames=8):
    """A random (untrained) small DiT saved like distill.py / teacher.py save theirs."""
    tok_bytes = data.train_tokenizer(data.all_captions())
    tok = data.Tokenizer(tok_bytes)
    torch.manual_seed(0)
    mc = M.ModelConfig(size=size, frames=frames, patch=8, dim=32, depth=1, heads=2, vocab=tok.vocab_size,
                       text_len=tok.max_len, causal=causal)
    net = M.DiT(mc)
    for p in net.parameters():   # randomise the zero-initialised adaLN layers so the output depends on the input
        if p.abs().sum() == 0:
            p.data.normal_(0, 0.1)
    M.save_checkpoint(dict(kind="student" if causal else "teacher", ema=net.state_dict(), model_cfg=asdict(mc),
                           train_cfg=dict(n_steps=4), tokenizer=torch.tensor(list(tok_bytes), dtype=torch.uint8)), path)
    return path


# -----------------------------------------------------------------------------
# building blocks

def test_frechet_matches_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(4000, 6)) @ rng.normal(size=(6, 6)) + 0.5
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # independent route: tr sqrt(Sa Sb) from the (real, non-negative) eigenvalues of the non-symmetric product
    tr = np.sqrt(np.linalg.eigvals(sa @ sb).real.clip(0)).sum()
    expect = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr
    assert abs(E.frechet(a, b) - expect) < 1e-6 * max(1, expect)
    assert abs(E.frechet(a, a)) < 1e-6 and abs(E.frechet(a, a + 2.0) - 4.0 * 6) < 1e-6


def test_prompt_grid_is_fixed_balanced_and_matches_the_world():
    p = E.prompt_grid(264)
    assert p == E.prompt_grid(264)                                          # same prompts for every model
    caps = [x["caption"] for x in p]
    assert len(set(caps)) == 132 and all(caps.count(c) == 2 for c in caps)
    for key, names in (("colour", E.COLOURS), ("shape", E.SHAPES)):
        counts = [sum(x[key] == n for x in p) for n in names]
        assert max(counts) == min(counts)
    assert len({x["noise"] for x in p}) == 264
    cfg = data.WorldConfig(size=32, frames=2, p_two=0)
    for x in p[:20]:
        for seed in x["world"]:
            assert data.make_clip(seed, cfg, "train")[1] == x["caption"]
    held = E.prompt_grid(12, "heldout")
    assert {(x["colour"], x["shape"], x["direction"]) for x in held} == data.HELD_OUT
    assert not {(x["colour"], x["shape"], x["direction"]) for x in p} & data.HELD_OUT


def test_tracker_follows_real_objects():
    x, y = E.world_batch([3, 1], 128, 32, 8)
    _, centres, _ = E.track(x)
    assert (centres - y["centres"]).norm(dim=-1).mean() < 0.6
    assert (E.tracker_direction(centres) == y["direction"]).float().mean() > 0.95
    frozen = E.tracker_direction(E.track(E.degrade(x, "freeze"))[1])
    assert (frozen == y["direction"]).float().mean() < 0.5


def test_two_object_check_sees_both_objects_and_their_directions():
    x, _, f, _ = data.make_batch([[78, i] for i in range(64)], data.WorldConfig(p_two=1.0))
    drawn, dirs = E.two_objects(x, f)
    assert drawn.mean() > 0.9 and dirs.mean() > 0.85                   # real clips: only crossings miss
    one = x.clone()
    one[..., 16:] = one[..., :1, :1]                                    # right half painted over
    assert E.two_objects(one, f)[0].mean() < 0.6
    assert E.two_objects(x, f[1:] + f[:1])[0].mean() < 0.15           # someone else's captions
    flipped = [dict(g, directions=[{"left": "right", "right": "left", "up": "down", "down": "up"}[d]
                                   for d in g["directions"]]) for g in f]
    assert E.two_objects(x, flipped)[1].mean() < 0.1


@torch.no_grad()
def test_composed_guidance_is_cfg_over_each_part(tiny_run):
    two, one = "a red circle moving left and a blue square moving up on a dark background", \
        "a red circle moving left on a dark background"
    assert data.caption_parts(two) == [one, "a blue square moving up on a dark background"]
    assert data.caption_parts(one) == []
    net = random_dit(causal=False).eval()
    x, sig = torch.randn(3, 4, 3, 16, 16), torch.rand(3, 4)
    text_c, text_u, other = (net.encode_text(ids_for(3, seed=k)) for k in range(3))
    # parts equal to the whole caption: x0_u + (1 + 2 * 1.5)(x0_c - x0_u), i.e. CFG 4; video 1 has no parts
    composed = M.guided_x0(net, x, sig, text_c, text_u, 3.0, M.Compose([text_c, text_c], torch.tensor([1, 0, 1]) > 0))
    assert torch.allclose(composed[[0, 2]], M.guided_x0(net, x, sig, text_c, text_u, 4.0)[[0, 2]], atol=1e-5)
    assert torch.allclose(composed[1], M.guided_x0(net, x, sig, text_c, text_u, 3.0)[1], atol=1e-5)
    moved = M.guided_x0(net, x, sig, text_c, text_u, 3.0, M.Compose([text_c, other], torch.ones(3) > 0))
    assert (moved - composed).abs().max() > 1e-3
    # the sampler: a video without parts comes out as without composing, one with parts does not
    plain, got = (M.euler_sample(net, x, text_c, text_u, 4, 3.0, compose=M.Compose([other, text_u], k))[0]
                  for k in (torch.zeros(3) > 0, torch.tensor([1, 0, 0]) > 0))
    assert torch.allclose(got[1:], plain[1:], atol=1e-5) and (got[0] - plain[0]).abs().max() > 1e-3
    assert torch.allclose(plain, M.euler_sample(net, x, text_c, text_u, 4, 3.0)[0], atol=1e-5)
    tch, tok = _teacher_and_tokenizer(tiny_run)
    assert sample.compose_of(tch, tok, [one, one]) is None
    compose = sample.compose_of(tch, tok, [two, one])
    assert compose.has.tolist() == [True, False] and len(compose.parts) == 2
    empty = tch.encode_text(tok.encode([""]))[0][0]       # no part: the empty caption (batched: equal up to rounding)
    assert torch.allclose(compose.parts[1][0][1], empty, atol=1e-5)
    assert not torch.allclose(compose.parts[1][0][0], empty, atol=1e-2)


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    a = rng.normal(size=500)
    d, lo, hi, p = E.paired_bootstrap(a, a + 0.1 + 0.05 * rng.normal(size=500))
    assert lo < 0.1 < hi and lo > 0 and p < 0.01 and abs(d - 0.1) < 0.01
    _, lo, hi, p = E.paired_bootstrap(a, a + 0.05 * rng.normal(size=500))
    assert lo < 0 < hi and p > 0.05
    with pytest.raises(ValueError):
        E.paired_bootstrap(a, a[:10])


def test_paired_fd_sees_a_shift_the_unpaired_sds_hide():
    rng = np.random.default_rng(0)
    ref, fa = rng.normal(size=(264, 8)), rng.normal(size=(264, 8))
    d, lo, hi, _ = E.paired_fd(fa, fa, ref, n_boot=50)
    assert d == lo == hi == 0                                      # the same model: exactly no difference
    fb = fa + 0.1                                                  # FD rises by ~8 x 0.1^2 (+ cross terms)
    d, lo, hi, p = E.paired_fd(fa, fb, ref, n_boot=100)
    assert lo > 0 and p < 0.05 and d > 0
    sd = np.hypot(E.boot_sd(fa, ref, 20), E.boot_sd(fb, ref, 20))
    assert d < 2 * sd                                              # unpaired SDs: within noise; paired CI: > 0


def test_step_similarity_matrices(tmp_path):
    ck = M.load_checkpoint(tiny_checkpoint(str(tmp_path / "s.pt"), size=16, frames=4))
    blocks, frames = E.step_similarity(ck, E.prompt_grid(3))
    assert blocks.shape == (2, 4, 4) and frames.shape == (4, 4, 4)
    for m in list(blocks) + list(frames):
        assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1) and (m <= 1 + 1e-9).all()
        assert m[0, 3] < 0.999                                                 # x0 moves along the chain


def test_sampling_is_fixed_per_prompt_and_seed(tmp_path):
    ck = M.load_checkpoint(tiny_checkpoint(str(tmp_path / "s.pt"), size=16, frames=4))
    p = E.prompt_grid(4)
    a, label = E.sample_checkpoint(ck, p, steps=1, ffe=False, batch=4)
    b, _ = E.sample_checkpoint(ck, p, steps=1, ffe=False, batch=1)           # no re-noising: batch-independent
    assert label == "1" and a.shape == (4, 4, 3, 16, 16) and torch.allclose(a, b, atol=1e-5)
    c, label = E.sample_checkpoint(ck, p, steps=1, ffe=True, batch=4)
    assert label == "1*" and torch.equal(c, E.sample_checkpoint(ck, p, steps=1, ffe=True, batch=4)[0])
    with pytest.raises(ValueError):
        E.sample_checkpoint(ck, p, steps=5)
    t = M.load_checkpoint(tiny_checkpoint(str(tmp_path / "t.pt"), causal=False, size=16, frames=4))
    v, label = E.sample_checkpoint(t, p[:2], steps=2)
    assert label == "teacher2" and v.shape == (2, 4, 3, 16, 16)


# -----------------------------------------------------------------------------
# the metrics react to what they claim to measure, and real data scores 1

def test_evaluator_passes_its_gates(evaluator):
    gates = E.gate_accuracies(evaluator[0], n=256, seed=7)
    if evaluator[1].startswith(HERE):   # the shipped evaluator must pass on a fresh seed too
        assert all(gates[k] >= g - 0.01 for k, g in E.GATES.items()), gates


def test_fvd_synth_sees_time(evaluator, world):
    fv = card(evaluator, world, world["real2"])["fvd_synth"]
    floor = max(fv["fd"], fv["floor"])
    for kind in ("shuffle", "freeze"):
        bad = card(evaluator, world, E.degrade(world["real2"], kind))
        assert bad["fvd_synth"]["fd"] > 10 * floor, (kind, bad["fvd_synth"], floor)
        # the per-frame FD is content-only: it barely moves under shuffling (frame t of a shuffled set is
        # still a real frame), so the clip net, not the frame net, supplies the temporal sensitivity
        if kind == "shuffle":
            assert np.mean(bad["curves"]["fd_frame"]) < 3 * np.mean(bad["curves"]["fd_frame_real"]) + 1


def test_recolouring_30_percent_drops_colour_accuracy(evaluator, world):
    clean = card(evaluator, world, world["real2"])["dimensions"]
    v = world["real2"].clone()
    idx = torch.arange(0, N, 3)[: int(0.3 * N)]
    v[idx] = E.degrade(v[idx], "recolour")
    bad = card(evaluator, world, v)["dimensions"]
    assert clean["colour"]["raw"] - bad["colour"]["raw"] > 0.25
    assert abs(clean["shape"]["raw"] - bad["shape"]["raw"]) < 0.05
    assert clean["joint"]["raw"] - bad["joint"]["raw"] > 0.2


def test_noise_lowers_cleanliness_and_flicker(evaluator, world):
    clean = card(evaluator, world, world["real2"])["dimensions"]
    noisy = world["real2"] + 0.1 * torch.randn(world["real2"].shape, generator=torch.Generator().manual_seed(0))
    bad = card(evaluator, world, noisy.clamp(-1, 1))
    d = bad["dimensions"]
    for k in ("cleanliness", "background_flicker"):
        assert d[k]["norm"] < clean[k]["norm"] - 0.2, (k, d[k], clean[k])
    assert bad["late_early"]["noise"] < 1.5                   # i.i.d. noise does not grow with t
    clean_noise = np.mean(card(evaluator, world, world["real2"])["curves"]["noise"])
    assert np.mean(bad["curves"]["noise"]) > 3 * clean_noise + 0.01


def test_pure_noise_scores_below_the_anchors(evaluator, world):
    g = torch.Generator().manual_seed(0)
    s = card(evaluator, world, torch.rand(world["real2"].shape, generator=g) * 2 - 1)   # no object, no background
    d = s["dimensions"]
    for k in ("background_consistency", "background_flicker", "dynamic_degree"):
        assert d[k]["norm"] < 0.5, (k, d[k])
    assert s["total"] < 0.3 and s["semantic"] < 0.2 and s["fvd_synth"]["fd"] > 100 * s["fvd_synth"]["floor"]


def test_drift_shows_in_the_per_frame_curves(evaluator, world):
    t = torch.linspace(0, 1, 8)[None, :, None, None, None]
    drift = (world["real2"] * (1 - 0.5 * t) + 0.5 * t).clamp(-1, 1)     # washes out toward white over time
    s = card(evaluator, world, drift)
    assert s["late_early"]["colour_err"] > 5 and s["late_early"]["fd_frame"] > 5, s["late_early"]


def test_real_data_scores_near_one(evaluator, world):
    s = card(evaluator, world, world["real2"])
    for d, r in s["dimensions"].items():
        assert 0.9 < r["norm"] < 1.1, (d, r)
        assert abs(r["real"] - r["anchor"]) > 0.02, (d, r)          # the anchor is really degraded
    assert abs(s["total"] - 1) < 0.05 and abs(s["quality"] - 1) < 0.05
    frozen = card(evaluator, world, E.degrade(world["real2"], "freeze"))["dimensions"]
    assert frozen["dynamic_degree"]["norm"] < 0.1 and frozen["direction"]["norm"] < 0.4


# -----------------------------------------------------------------------------
# the CLI

def test_cli_scores_writes_json_and_compares(tmp_path, evaluator):
    if not all(evaluator[0]["gates"][k] >= g for k, g in E.GATES.items()):
        pytest.skip("the fallback evaluator trained here did not pass its gates")
    ck = tiny_checkpoint(str(tmp_path / "student.pt"))
    common = [f"--ckpt={ck}", "--n=24", "--n_heldout=12", "--sim_n=4", "--boot_fd=3", f"--out={tmp_path}",
              f"--evaluator={evaluator[1]}"]
    p = run_eval(common + ["--steps=1"])
    for text in ("TOTAL", "FVD-synth", "late/early", "held-out", "x0 cos-sim block 3", "time:"):
        assert text in p.stdout, p.stdout
    r = json.load(open(tmp_path / "student_1star.json"))
    assert r["label"] == "1*" and len(r["scores"]["per_video"]["total"]) == 24
    assert np.array(r["similarity"]["blocks"]).shape == (4, 4, 4)
    run_eval(common + ["--steps=2", "--ffe=false"])
    p = run_eval([f"--compare={tmp_path / 'student_1star.json'},{tmp_path / 'student_2.json'}"])
    assert "95% CI" in p.stdout and "total" in p.stdout and "FVD-synth b - a (paired)" in p.stdout
    names = {*E.QUALITY, *E.SEMANTIC, "total"}
    lines = [l.split() for l in p.stdout.splitlines() if l.split() and l.split()[0] in names]
    parts, total = [float(l[-1]) for l in lines if l[0] != "total"], [float(l[3]) for l in lines if l[0] == "total"]
    assert len(parts) == len(E.QUALITY) + len(E.SEMANTIC) and abs(sum(parts) - total[0]) < 1e-3   # the parts add up
    p = run_eval([f"--table={tmp_path / 'student_1star.json'},{tmp_path / 'student_2.json'}"])
    rows = [l for l in p.stdout.splitlines() if l.startswith("| student.pt")]
    assert len(rows) == 4 and f"{np.mean(r['scores']['per_video']['total']):.3f} ±" in rows[0], p.stdout
    m = np.array(r["similarity"]["blocks"][3])                       # block 3's mean off-diagonal similarity
    assert f"{(m.sum() - np.trace(m)) / 12:.3f}; " in rows[2], (rows[2], m)
    other = json.load(open(tmp_path / "student_2.json"))     # another share of two-object clips: compares
    other["world"]["p_two"] = 0.5                             # (every scorecard draws single-object clips)
    other["world"]["two_apart"] = True
    json.dump(other, open(tmp_path / "other.json", "w"))
    run_eval([f"--compare={tmp_path / 'student_1star.json'},{tmp_path / 'other.json'}"])
    other["world"]["p_two"], other["world"]["two_apart"] = 0.2, False   # scored against another world: refused
    other["world"]["centred"] = not other["world"]["centred"]
    json.dump(other, open(tmp_path / "other.json", "w"))
    p = run_eval([f"--compare={tmp_path / 'student_1star.json'},{tmp_path / 'other.json'}"], check=False)
    assert p.returncode != 0 and "different worlds" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_cli_refuses_with_one_line_errors(tmp_path, evaluator):
    ck = tiny_checkpoint(str(tmp_path / "student.pt"))
    small = tiny_checkpoint(str(tmp_path / "small.pt"), size=16, frames=4)
    failed = torch.load(evaluator[1], weights_only=True)
    failed["gates"] = {**failed["gates"], "frame_shape": 0.5}
    torch.save(failed, tmp_path / "failed.pt")
    for args, message in (([f"--ckpt={ck}", f"--evaluator={tmp_path / 'none.pt'}"], "python eval.py --train=true"),
                          ([f"--ckpt={ck}", f"--evaluator={tmp_path / 'failed.pt'}"], "failed its accuracy gates"),
                          ([f"--ckpt={small}", f"--evaluator={evaluator[1]}"], "--size=16 --frames=4"),
                          (["--compare=a.json"], "two existing result JSONs"),
                          (["--bogus=1"], "unknown option --bogus")):
        p = run_eval(args, check=False)
        assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
        assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_cli_train_saves_and_refuses_an_evaluator_that_fails_its_gates(tmp_path):
    path = tmp_path / "ev.pt"
    p = run_eval(["--train=true", "--train_steps=2", f"--evaluator={path}"], check=False)
    assert p.returncode != 0 and "failed its gates" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert path.exists() and os.path.getsize(path) < 4e6
    with pytest.raises(ValueError, match="failed its accuracy gates"):
        E.load_evaluator(str(path))


def test_flop_formula_matches_counted_flops(monkeypatch):
    """bench.dit_flops (the benchmark's FLOP/s) equals torch's FLOP counter on a real forward, with
    attention written as explicit matmuls so the counter sees it; causal (dense mask) and with a cache."""
    from torch.utils.flop_counter import FlopCounterMode

    def sdpa(q, k, v, attn_mask=None):
        w = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        if attn_mask is not None:
            w = w.masked_fill(~attn_mask, float("-inf"))
        return w.softmax(-1) @ v
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    cfg = M.model_config("test", vocab=40, text_len=12)
    cfg.causal, cfg.text_depth = True, 0          # the caption encoder uses its own fused attention
    net = M.DiT(cfg)
    ids, x = torch.randint(3, 40, (1, 12)), torch.randn(1, cfg.frames, 3, cfg.size, cfg.size)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(x, torch.rand(1, cfg.frames), ids)
    assert abs(fc.get_total_flops() / bench.dit_flops(cfg, cfg.frames, cfg.frames, 12) - 1) < 0.01
    cache = net.new_cache()
    with torch.no_grad():
        cache.write = True
        net(x[:, :2], torch.zeros(1, 2), ids, cache=cache)
        cache.write = False
        with FlopCounterMode(display=False) as fc:
            net(x[:, 2:3], torch.rand(1, 1), ids, cache=cache)
    assert abs(fc.get_total_flops() / bench.dit_flops(cfg, 1, 3, 12) - 1) < 0.01


# -----------------------------------------------------------------------------
# the reference release: defaults = the shipped recipe, one-way imports, --help, the pipeline

SCRIPTS = ["data.py", "teacher.py", "distill.py", "sample.py", "eval.py", "bench.py"]
PER_RUN = {"out", "teacher", "init", "data", "resume", "stop_at", "device", "method"}   # not the recipe
# options newer than the shipped checkpoints: their old values
NEWER = {"world_scale": 1.0, "p_two": 0.2, "two_apart": False, "text_depth": 0}


@pytest.mark.parametrize("ckpt,config", [("teacher_tiny.pt", teacher.TrainConfig), ("ode_tiny.pt", distill.DistillConfig),
                                         ("dmd_tiny.pt", distill.DistillConfig), ("asd_tiny.pt", distill.DistillConfig)])
def test_defaults_are_the_recipe_of_the_shipped_checkpoints(ckpt, config):
    """Every option that shapes a result defaults to the value that made the shipped checkpoint."""
    stored = torch.load(os.path.join(HERE, "ckpt", ckpt), weights_only=True)["train_cfg"]
    fields = set(asdict(config())) - PER_RUN
    if ckpt == "ode_tiny.pt":      # stage 1 reads only these
        fields = {"steps", "batch", "n_steps", "ode_pairs", "ode_lr", "real_cfg", "seed"}
    if ckpt == "dmd_tiny.pt":      # the baseline never reads the discriminator's options
        fields -= {"alpha", "d_loss", "d_pair", "d_sigma_max", "lr_d"}
    diff = {f: (stored.get(f, NEWER.get(f, "missing")), getattr(config(), f)) for f in fields
            if stored.get(f, NEWER.get(f, "missing")) != getattr(config(), f)}
    assert not diff, f"{ckpt}: option: (stored, default) {diff}"
    assert data.world_of(torch.load(os.path.join(HERE, "ckpt", ckpt), weights_only=True)) == data.WorldConfig()


def test_imports_run_one_way():
    """data <- kernels <- model <- {teacher, distill, sample} <- eval <- bench: no file imports its
    own level or one above it, not even inside a function."""
    level = {"data": 0, "kernels": 1, "model": 2, "teacher": 3, "distill": 3, "sample": 3, "eval": 4, "bench": 5}
    for name, lv in level.items():
        tree = ast.parse(open(os.path.join(HERE, name + ".py")).read())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            for imported in names:
                root = (imported or "").split(".")[0]
                assert level.get(root, -1) < lv, f"{name}.py imports {root}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_every_option_and_exits_0(script):
    for flag in ("--help", "-h"):
        p = run([script, flag])
        assert p.returncode == 0 and "python " + script in p.stdout, p.stdout
    module = {"data.py": None, "teacher.py": teacher.TrainConfig(), "distill.py": distill.DistillConfig(),
              "sample.py": sample.SampleConfig(), "eval.py": E.EvalConfig(), "bench.py": bench.BenchConfig()}[script]
    if module is None:
        return
    lines = {l.split()[0]: l for l in p.stdout.splitlines() if l.startswith("  --")}
    for f, v in asdict(module).items():
        value = str(v).lower() if isinstance(v, bool) else str(v)
        assert f"--{f}={value}" in lines and len(lines[f"--{f}={value}"].split()) > 1, (f, p.stdout)
    if script in ("teacher.py", "distill.py", "eval.py"):
        assert "presets" in p.stdout and "  test " in p.stdout


def test_ode_pairs_cache_is_keyed_on_what_made_it(tmp_path, tiny_run):
    tch, tok = _teacher_and_tokenizer(tiny_run)
    sig = M.few_step_sigmas(2, tch.cfg.shift)
    cfg = distill.DistillConfig(teacher=f"{tiny_run}/teacher_ema.pt", out=str(tmp_path), ode_pairs=2, n_steps=2)
    a = distill.ode_pairs(cfg, tch, tok, torch.device("cpu"), True, sig)
    assert torch.equal(distill.ode_pairs(cfg, tch, tok, torch.device("cpu"), True, sig)[0], a[0])   # reused
    for change in (dict(real_cfg=1.0), dict(seed=1), dict(ode_pairs=3)):
        other = distill.ode_pairs(distill.DistillConfig(**{**asdict(cfg), **change}), tch, tok, torch.device("cpu"),
                                  True, sig)
        assert not torch.equal(other[1], a[1]), change
    (tmp_path / "t.pt").write_bytes(open(f"{tiny_run}/teacher_ema.pt", "rb").read() + b"\0")   # other teacher bytes
    distill.ode_pairs(distill.DistillConfig(**{**asdict(cfg), "teacher": str(tmp_path / "t.pt")}), tch, tok,
                      torch.device("cpu"), True, sig)
    assert len(list(tmp_path.glob("ode_pairs_*.pt"))) == 5


def test_sample_without_ffmpeg_writes_gif_and_png(tmp_path, tiny_run, monkeypatch, capsys):
    monkeypatch.setattr(sample, "has_ffmpeg", lambda: False)
    sample.main([f"--ckpt={tiny_run}/asd_ema.pt", f"--out={tmp_path}", "--n=1"])
    out = capsys.readouterr().out
    assert "pip install imageio-ffmpeg" in out and "wrote" in out
    assert {p.name for p in tmp_path.iterdir()} == {"sample_1star.gif", "sample_1star.png", "sample_1star.txt"}


@pytest.mark.parametrize("script", ["teacher.py", "distill.py"])
def test_non_finite_training_stops_with_one_line_and_a_good_checkpoint(tmp_path, tiny_run, script):
    """An absurd lr drives the weights to inf within a few steps: training stops with one line and the
    last checkpoint on disk is the last good one (finite, loadable)."""
    if script == "teacher.py":
        args, ck = ["teacher.py", "--model=test", "--steps=30", "--compile=false", "--save_every=1", "--warmup=1",
                    "--lr=1e30"], tmp_path / "teacher.pt"
    else:
        args, ck = ["distill.py", f"--teacher={tiny_run}/teacher_ema.pt", f"--init={tiny_run}/ode.pt",
                    "--steps=30", "--batch=2", "--save_every=1", "--lr_d=1e30"], tmp_path / "asd.pt"
    p = run(args + [f"--out={tmp_path}"], check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr and "non-finite" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()[-1:]) == 1 and str(ck) in p.stderr
    state = torch.load(ck, weights_only=True)
    assert 1 <= state["step"] < 30
    assert all(torch.isfinite(t).all() for t in state["model" if script == "teacher.py" else "G"].values())


def test_pipeline_test_tier_runs_every_stage(tmp_path):
    """bash pipeline.sh test: every stage of the real pipeline in a few steps, down to the results table
    (the evaluator nets are copied in: training them takes minutes)."""
    out = os.path.join(HERE, "out", "pipeline_test")
    subprocess.run(["rm", "-rf", out])
    os.makedirs(out)
    subprocess.run(["cp", os.path.join(HERE, "ckpt", "evaluator.pt"), out], check=True)
    p = subprocess.run(["bash", "pipeline.sh", "test"], cwd=HERE, capture_output=True, text=True, env=ENV, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = open(os.path.join(out, "results.md")).read()
    assert table.count("| asd_ema.pt |") == 10 and table.count("| dmd_ema.pt |") == 10 and "95% CI" in table


# -----------------------------------------------------------------------------
# image-to-video and prompt switching

def test_image_to_video_commits_the_given_frame_exactly(tiny_run, tmp_path):
    """sample.py --first_frame: an image of any size is resized and cropped as the folder loader does,
    and the first output frame is exactly that image (it is committed as clean context, sigma 0)."""
    import imageio.v3 as iio
    rng = np.random.default_rng(0)
    image = (rng.random((37, 53, 3)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "in.png", image)
    frame = data.load_image(str(tmp_path / "in.png"), 16)
    assert torch.equal(frame, data.fit(image[None], 16)[0]) and frame.shape == (3, 16, 16)
    ck = M.load_checkpoint(f"{tiny_run}/asd_ema.pt")
    net, tok, n_max = sample.load(ck)
    ids = tok.encode(["a red circle moving left on a dark background"] * 2)
    noise = torch.randn(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for first_steps in (0, 4):
        video = sample.generate(net, ids, None, noise, 1, first_steps, n_max, first_frame=frame[None].expand(2, -1, -1, -1))
        assert torch.equal(video[:, 0], frame[None].expand(2, -1, -1, -1))
        assert not torch.equal(video[:, 1:], sample.generate(net, ids, None, noise, 1, first_steps, n_max)[:, 1:])
    tch, _, _ = sample.load(M.load_checkpoint(f"{tiny_run}/teacher_ema.pt"))
    video = sample.generate(tch, ids, tok.encode(["", ""]), noise, 4, first_frame=frame[None].expand(2, -1, -1, -1))
    assert torch.equal(video[:, 0], frame[None].expand(2, -1, -1, -1))
    run(["sample.py", f"--ckpt={tiny_run}/asd_ema.pt", f"--first_frame={tmp_path / 'in.png'}", "--n=1",
         f"--out={tmp_path}"])
    png = iio.imread(tmp_path / "sample_1star.png")[::4, ::4][:16, :16]          # frame 0, upscaled 4x
    assert np.abs(png.astype(int) - sample.to_uint8(frame).astype(int)).max() == 0


@pytest.mark.parametrize("recache", [False, True])
def test_prompt_switch_keeps_the_frames_before_it(tiny_run, recache):
    ck = M.load_checkpoint(f"{tiny_run}/asd_ema.pt")
    net, tok, n_max = sample.load(ck)
    ids = tok.encode(["a red circle moving left on a dark background"] * 2)
    ids_b = tok.encode(["a blue square moving up on a grey background"] * 2)
    noise = torch.randn(2, 12, 3, 16, 16, generator=torch.Generator().manual_seed(0))   # 3x the trained length
    gen = lambda switch: sample.generate(net, ids, None, noise, 1, 4, n_max, generator=torch.Generator().manual_seed(1),
                                         switch=switch)
    plain, switched = gen(None), gen((6, ids_b, recache))
    assert torch.equal(plain[:, :6], switched[:, :6]) and not torch.allclose(plain[:, 6:], switched[:, 6:])
    assert torch.equal(gen((6, ids, recache)), plain) == (not recache)   # same caption: keep = no switch at all


def test_recache_equals_the_cache_the_stream_built(tiny_run):
    """Re-caching under the same caption rebuilds the K/V of a stream that fits the window exactly."""
    net, tok, _ = sample.load(M.load_checkpoint(f"{tiny_run}/asd_ema.pt"))
    ids = tok.encode(["a red circle moving left on a dark background"])
    blocks, cache, text = [torch.randn(1, 1, 3, 16, 16) for _ in range(3)], net.new_cache(), net.encode_text(ids)
    with torch.no_grad():
        cache.write = True
        for x in blocks:
            net(x, torch.zeros(1, 1), text, cache=cache)
    again = M.recache(net, blocks, text, window=0)
    assert again.frames == cache.frames == 3
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(again.k + again.v, cache.k + cache.v))


def test_switch_study_shares_the_frames_before_the_switch(tmp_path, evaluator):
    """eval.py --switch: every mode samples the same noise, so each curve is equal before the switch; the
    object's area is measured in pixels and its ratio after / before is reported per mode."""
    _, ev_path = evaluator
    run_eval(["--ckpt=ckpt/asd_tiny.pt", "--steps=1", "--switch=4", "--switch_frames=12", "--n=4", "--preset=test",
              f"--evaluator={ev_path}", f"--out={tmp_path}"])
    r = json.load(open(tmp_path / "asd_tiny_1star_switch4.json"))
    for mode in ("keep", "recache"):
        for k, v in r[mode]["curves"].items():
            assert v[:4] == r["none"]["curves"][k][:4], (mode, k)
        assert r[mode]["area_kept"] >= 0 and r[mode]["curves"]["area"][0] > 4
    assert r["none"]["area_kept"] > 0.5       # without a switch the object stays
