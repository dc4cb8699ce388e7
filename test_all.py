"""
Tests: every one asserts something that fails if the code is wrong. CPU only, hermetic.

    python -m pytest -q test_all.py            # the default run (a few minutes on 2 cores)

Scripts are run the way users run them (subprocess, `torchrun` for DDP) on the `test` model size.
"""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import distill
import kernels
import model as M
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
    run(["distill.py", "--stage=ode", f"--teacher={d}/teacher_ema.pt", f"--out={d}", "--steps=2",
         "--ode_pairs=8", "--ode_euler=8", "--batch=4"])
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
    assert video.shape == (16, 3, 32, 32) and video.min() >= -1 and video.max() <= 1
    assert centres.shape == (16, len(factors["colours"]), 2)
    for c, s, d in zip(factors["colours"], factors["shapes"], factors["directions"]):
        assert f"a {c} {s} moving {d}" in caption


def test_world_motion_follows_caption():
    """The object's centre moves in the captioned direction (before any bounce)."""
    for i in range(40):
        video, caption, f, centres = data.make_clip([9, i], data.WorldConfig(frames=3))
        dx, dy = centres[1, 0] - centres[0, 0]
        d = f["directions"][0]
        assert {"left": dx < 0, "right": dx > 0, "up": dy < 0, "down": dy > 0}[d] or \
            np.allclose(centres[2, 0], centres[0, 0], atol=3.5), caption   # (a bounce at frame 1)


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
    assert len(calls) == 4 * (3 + 1) and len(grad_calls) == 4          # 3 steps + 1 commit per block
    assert not any(c[1] for c in calls)                                # inputs never carry a graph
    cache = calls[-1][2]
    assert all(not k.requires_grad for k in cache.k) and cache.frames == 4
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


def test_compiled_elementwise_ops_match_reference():
    x, sh, sc = torch.randn(2, 4, 16, 32), torch.randn(2, 4, 1, 32), torch.randn(2, 4, 1, 32)
    assert (kernels.compiled("modulate")(x, sh, sc) - kernels.modulate_ref(x, sh, sc)).abs().max() <= 1e-5
    q, cos, sin = torch.randn(2, 2, 64, 16), torch.randn(64, 8), torch.randn(64, 8)
    assert (kernels.compiled("rope")(q, cos, sin) - kernels.rope_ref(q, cos, sin)).abs().max() <= 1e-5
    # rope is a rotation: norms of each pair are preserved for unit cos^2 + sin^2
    a = torch.rand(64, 8) * 6
    assert torch.allclose(kernels.rope_ref(q, a.cos(), a.sin()).norm(dim=-1), q.norm(dim=-1), atol=1e-5)


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
    if world > 1:
        torch.distributed.destroy_process_group()


def test_ddp_two_ranks_equal_one_process_with_double_batch(tmp_path):
    port = random.randint(20000, 40000)
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
                 ["distill.py", "--method=asd", f"--teacher={tiny_run}/teacher_ema.pt", f"--init={tiny_run}/ode.pt",
                  f"--out={d}", "--steps=2", "--batch=2"]):
        p = subprocess.run(torchrun + args, cwd=HERE, capture_output=True, text=True, env=ENV, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
    assert torch.load(f"{d}/teacher.pt", weights_only=True)["step"] == 2
    assert torch.load(f"{d}/asd.pt", weights_only=True)["step"] == 2


def _exit_steps(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    M.setup("cpu", 0)
    mine = [random.Random(100 * rank + i).randint(1, 4) for i in range(20)]   # rank-dependent draws
    shared = [M.broadcast_int(n, torch.device("cpu")) for n in mine]
    torch.save(dict(mine=mine, shared=shared), f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_exit_step_identical_across_ranks(tmp_path):
    port = random.randint(40001, 60000)
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


def _sf_state(tiny_run, method):
    tck = M.load_checkpoint(f"{tiny_run}/teacher_ema.pt", "teacher")
    tch = M.build_model(tck).requires_grad_(False)
    cfg = distill.DistillConfig(method=method, batch=2, lr_d=1e-2, lr_g=1e-3, lr_fake=1e-3)
    s = distill.build_sf(cfg, 1, torch.device("cpu"), tch, M.load_checkpoint(f"{tiny_run}/ode.pt", "student"))
    tok = data.Tokenizer(bytes(tck["tokenizer"].tolist()), max_len=tch.cfg.text_len)
    ids, ids_u = distill.prompts(cfg, 0, 0, 2, tok, "cpu")
    return s, ids, ids_u


def snapshot(*mods):
    return [p.detach().clone() for m in mods for p in m.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_discriminator_step_changes_only_the_head(tiny_run):
    s, ids, _ = _sf_state(tiny_run, "asd")
    g0, f0, h0 = snapshot(s.G), snapshot(s.fake), snapshot(s.head)
    distill.discriminator_step(s, 2, ids, torch.Generator().manual_seed(0))
    assert not same(h0, snapshot(s.head))
    assert same(g0, snapshot(s.G)) and same(f0, snapshot(s.fake))


def test_generator_step_leaves_fake_score_and_discriminator_unchanged(tiny_run):
    s, ids, ids_u = _sf_state(tiny_run, "asd")
    g0, f0, h0, t0 = snapshot(s.G), snapshot(s.fake), snapshot(s.head), snapshot(s.teacher)
    stats = distill.generator_step(s, 1, ids, ids_u, torch.Generator().manual_seed(0))
    assert "loss_asd" in stats                                    # n=1 < N: the ASD term was used
    assert not same(g0, snapshot(s.G))
    assert same(f0, snapshot(s.fake)) and same(h0, snapshot(s.head)) and same(t0, snapshot(s.teacher))
    assert all(p.grad is None for p in list(s.fake.parameters()) + list(s.head.parameters()))


def test_fake_step_changes_only_the_fake_score(tiny_run):
    s, ids, _ = _sf_state(tiny_run, "dmd")
    g0, f0 = snapshot(s.G), snapshot(s.fake)
    distill.fake_step(s, 2, ids, torch.Generator().manual_seed(0))
    assert same(g0, snapshot(s.G)) and not same(f0, snapshot(s.fake))


def test_distill_resume_after_kill_9(tmp_path, tiny_run):
    """kill -9 mid-run, --resume: the result equals an uninterrupted run (nothing lost beyond the
    last checkpoint, which is written atomically)."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = ["distill.py", "--method=asd", f"--teacher={tiny_run}/teacher_ema.pt", f"--init={tiny_run}/ode.pt",
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


@pytest.mark.parametrize("args,message", [
    (["sample.py", "--bogus=1"], "unknown option --bogus"),
    (["sample.py", "--steps=two"], "not a valid int"),
    (["teacher.py", "--lr=fast"], "not a valid float"),
    (["distill.py", "--nonsense=3"], "unknown option"),
    (["sample.py", "--ckpt=/no/such/file.pt"], "not found"),
    (["sample.py", "--prompt="], "prompt is empty"),
    (["sample.py", "--prompt=" + " ".join(["red"] * 40)], "more than"),
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
