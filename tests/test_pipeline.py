"""FGPortraitPipeline and the diffusion renderer end to end on tiny random weights (CPU)."""
import pytest
import torch

pytest.importorskip("diffusers")

from fgp_fast.camera import Camera  # noqa: E402
from fgp_fast.pipeline import FGPortraitPipeline, PipelineConfig  # noqa: E402
from fgp_fast.render.diffusion import DiffusionRenderer  # noqa: E402

from meshes import icosphere  # noqa: E402

N = 2
SIZE = 64


def _perturb(module, seed, scale=0.05, only=""):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if only in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def pipe():
    pipe = FGPortraitPipeline.random("tiny", n_samples=N, temporal=True,
                                     config=PipelineConfig(n_samples=N, window=3, overlap=1))
    _perturb(pipe.controlnet, 1)  # a "trained" ControlNet, so the flow matters
    _perturb(pipe.motion_unet, 2, scale=0.01, only="motion_modules")  # and temporal layers that mix frames
    pipe.set_source(torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)))
    return pipe


def _flow(frames, seed=0):
    return 0.02 * torch.randn(frames, 3 * N, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scheduler, steps", [("lcm", 1), ("lcm", 2), ("lcm", 4), ("ddim", 2), ("tcd", 3)])
def test_image_mode_runs_and_is_deterministic(pipe, scheduler, steps):
    pipe.set_scheduler(scheduler)
    flow = _flow(2)
    image = pipe(flow, num_steps=steps, seed=3)
    assert image.shape == (2, 3, SIZE, SIZE) and image.dtype == torch.float32
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert torch.equal(image, pipe(flow, num_steps=steps, seed=3))
    if (scheduler, steps) == ("lcm", 2):
        latents = pipe(flow, num_steps=steps, seed=3, output="latent")
        assert not torch.equal(latents, pipe(flow, num_steps=steps, seed=4, output="latent"))
        assert not torch.equal(latents, pipe(_flow(2, seed=1), num_steps=steps, seed=3, output="latent"))


def test_video_mode_sliding_windows(pipe):
    pipe.set_scheduler("lcm")
    flow = _flow(5)  # windows [0, 3), [2, 5)
    video = pipe(flow, num_steps=2, seed=0, video=True)
    assert video.shape == (5, 3, SIZE, SIZE)
    assert torch.equal(video, pipe(flow, num_steps=2, seed=0, video=True))
    frames = pipe(flow, num_steps=2, seed=0, output="latent")
    assert not torch.equal(pipe(flow, num_steps=2, seed=0, video=True, output="latent"), frames)


def test_clear_errors(pipe):
    with pytest.raises(ValueError, match="flow must be"):
        pipe(torch.zeros(1, 3 * N + 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="num_steps"):
        pipe(_flow(1), num_steps=0)
    with pytest.raises(ValueError, match="unknown scheduler"):
        pipe.set_scheduler("euler")
    fresh = FGPortraitPipeline.random("tiny", n_samples=N)
    with pytest.raises(RuntimeError, match="set_source"):
        fresh(_flow(1))
    fresh.set_source(torch.rand(1, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="temporal layers"):
        fresh(_flow(2), video=True)


def test_save_load_round_trip_exact(pipe, tmp_path):
    pipe.set_scheduler("tcd", num_steps=2)
    pipe.save_pretrained(tmp_path)
    loaded = FGPortraitPipeline.from_pretrained(tmp_path)
    assert loaded.config == pipe.config and type(loaded.scheduler) is type(pipe.scheduler)
    for a, b in zip(pipe._modules(), loaded._modules()):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(loaded.text_embeddings, pipe.text_embeddings)
    loaded.set_source(torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)))
    flow = _flow(3)
    assert torch.equal(loaded(flow, seed=1), pipe(flow, seed=1))
    assert torch.equal(loaded(flow, seed=1, video=True), pipe(flow, seed=1, video=True))


def test_missing_weights_say_what_to_provide(tmp_path):
    with pytest.raises(FileNotFoundError, match="unet/config.json .the SD1.5 UNet.*from_sd15"):
        FGPortraitPipeline.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no SD1.5 weights"):
        FGPortraitPipeline.from_sd15(tmp_path / "nothing.safetensors", torch.zeros(1, 77, 768))


def test_diffusion_renderer_renders_meshes():
    verts, faces = icosphere(2, dtype=torch.float32)
    verts = (0.1 * verts)[None]
    camera = Camera.frame_head(verts[0], SIZE)
    moved = verts + torch.tensor([0.01, 0.0, 0.0])
    renderer = DiffusionRenderer(FGPortraitPipeline.random("tiny", n_samples=N), faces, backend="reference")
    with pytest.raises(RuntimeError, match="set_source"):
        renderer.render(moved)
    renderer.set_source(torch.rand(1, 3, SIZE, SIZE), verts, camera)
    image = renderer.render(torch.cat([verts, moved]))
    assert image.shape == (2, 3, SIZE, SIZE) and image.min() >= 0 and image.max() <= 1
    assert torch.allclose(image[:1], renderer.render(verts), atol=1e-5)  # batch 2 vs 1: kernel order only
