"""Diffusion models on tiny random configs: reference attention, flow ControlNet, temporal layers,
fused step (torch.compile fullgraph), weight loading and key mapping."""
import copy

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import UNet2DConditionModel  # noqa: E402

from fgp_fast.models import (AppearanceNet, FusedStep, add_temporal_layers, install_reference_read,  # noqa: E402
                             load_appearance_weights, make_flow_controlnet, map_xportrait_appearance_keys,
                             self_attention_names, tiny_unet_config)

N = 2  # flow samples: 6 channels


def _unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(**tiny_unet_config()).eval()


def _perturb(module, seed=1, scale=0.2):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def _inputs(batch=2, seed=3):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, 8, 8, generator=gen)
    text = torch.randn(1, 4, 32, generator=gen)
    flow = torch.randn(batch, 3 * N, 64, 64, generator=gen)
    return latents, text, flow


@pytest.fixture(scope="module")
def nets():
    base = _unet()
    appearance = AppearanceNet.from_unet(base)
    generator = copy.deepcopy(base)
    names = install_reference_read(generator)
    return base, appearance, generator, names


@torch.no_grad()
def test_attn1_names_pair_and_only_attn1_reads(nets):
    base, appearance, generator, names = nets
    assert names == appearance.names == self_attention_names(base)
    assert names and all(n.endswith(".attn1") for n in names)
    procs = generator.attn_processors
    assert all(type(procs[n + ".processor"]).__name__ == "ReferenceReadProcessor" for n in names)
    assert all(type(p).__name__ != "ReferenceReadProcessor" for k, p in procs.items() if ".attn2." in k)


@torch.no_grad()
def test_empty_bank_equals_plain_unet(nets):
    base, _, generator, _ = nets
    latents, text, _ = _inputs()
    t = torch.tensor(500)
    plain = base(latents, t, text.expand(2, -1, -1)).sample
    assert torch.allclose(generator(latents, t, text.expand(2, -1, -1)).sample, plain, atol=1e-5)
    out = generator(latents, t, text.expand(2, -1, -1), cross_attention_kwargs={"reference": {}}).sample
    assert torch.allclose(out, plain, atol=1e-5)


@torch.no_grad()
def test_reference_changes_output_and_broadcasts(nets):
    base, appearance, generator, names = nets
    latents, text, _ = _inputs(batch=3)
    t = torch.tensor(500)
    ref_a = appearance(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7)), text)
    ref_b = appearance(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(8)), text)
    assert len(ref_a) == len(names) and ref_a[0].shape[0] == 1
    run = lambda ref, x: generator(x, t, text.expand(x.shape[0], -1, -1),  # noqa: E731
                                   cross_attention_kwargs={"reference": dict(zip(names, ref))}).sample
    out_a, out_b = run(ref_a, latents), run(ref_b, latents)
    plain = base(latents, t, text.expand(3, -1, -1)).sample
    assert (out_a - plain).abs().max() > 1e-3
    assert (out_a - out_b).abs().max() > 1e-3
    # one bank over a batch of frames == each frame alone
    for i in range(3):
        assert torch.allclose(out_a[i:i + 1], run(ref_a, latents[i:i + 1]), atol=1e-5)
    with pytest.raises(ValueError, match="expected 1 or 3"):
        run(tuple(r.expand(2, -1, -1) for r in ref_a), latents)


@torch.no_grad()
def test_controlnet_zero_at_init_then_sees_flow():
    unet = _unet()
    controlnet = make_flow_controlnet(unet, n_samples=N).eval()
    assert controlnet.config.conditioning_channels == 3 * N
    names = install_reference_read(unet)
    step = FusedStep(unet, controlnet, names).eval()
    latents, text, flow = _inputs()
    t = torch.tensor(300)
    plain = unet(latents, t, text.expand(2, -1, -1)).sample
    assert torch.equal(step(latents, t, text, flow), plain)  # zero convolutions: adds exactly nothing
    _perturb(controlnet)
    out1, out2 = step(latents, t, text, flow), step(latents, t, text, flow.flip(-1))
    assert (out1 - out2).abs().max() > 1e-3


def test_flow_channels_enforced():
    unet = _unet()
    step = FusedStep(unet, make_flow_controlnet(unet, n_samples=N), [])
    latents, text, flow = _inputs()
    with pytest.raises(ValueError, match="channels but the ControlNet takes 6"):
        step(latents, torch.tensor(1), text, flow[:, :3])
    with pytest.raises(ValueError, match="8x the latents"):
        step(latents, torch.tensor(1), text, flow[..., :32, :32])
    with pytest.raises(ValueError, match="n_samples"):
        make_flow_controlnet(unet, n_samples=0)


@torch.no_grad()
def test_temporal_layers_start_as_identity(nets):
    base, appearance, _, _ = nets
    motion = add_temporal_layers(copy.deepcopy(base)).eval()
    names = install_reference_read(motion)
    assert names == appearance.names  # the appearance bank pairs with the video UNet by name
    image = copy.deepcopy(base)
    install_reference_read(image)
    controlnet = make_flow_controlnet(base, n_samples=N).eval()
    _perturb(controlnet)
    latents, text, flow = _inputs(batch=3)
    ref = appearance(latents[:1], text)
    t = torch.tensor(200)
    video = FusedStep(motion, controlnet, names)(latents, t, text, flow, *ref)
    frames = FusedStep(image, controlnet, names)(latents, t, text, flow, *ref)
    assert torch.allclose(video, frames, atol=1e-4)
    _perturb(motion, seed=5, scale=0.05)  # trained temporal layers mix frames
    assert (FusedStep(motion, controlnet, names)(latents, t, text, flow, *ref) - frames).abs().max() > 1e-4


def test_fused_step_compiles_fullgraph(nets):
    base, appearance, generator, names = nets
    controlnet = make_flow_controlnet(base, n_samples=N).eval()
    step = FusedStep(generator, controlnet, names).eval()
    latents, text, flow = _inputs()
    t = torch.tensor(400)
    with torch.no_grad():
        ref = appearance(latents[:1], text)
        expected = step(latents, t, text, flow, *ref)
        torch._dynamo.reset()
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        assert torch.allclose(compiled(latents, t, text, flow, *ref), expected, atol=1e-5)


def _to_ldm(state: dict, unet: UNet2DConditionModel) -> dict:
    """Inverse of diffusers' LDM->diffusers UNet conversion, for a synthetic X-Portrait checkpoint."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    cfg = unet.config
    levels, layers = len(cfg.block_out_channels), cfg.layers_per_block
    stride = layers + 1  # LDM numbers blocks consecutively: layers (+ a resampler) per level
    rename = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for i in range(levels):
        for j in range(layers):
            block = stride * i + j + 1
            rename[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{block}.0"
            rename[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{block}.1"
        if i < levels - 1:
            rename[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{stride * (i + 1)}.0.op"
        for j in range(layers + 1):
            block = stride * i + j
            rename[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{block}.0"
            rename[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{block}.1"
        if i < levels - 1:
            has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
            rename[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{stride * i + layers}.{2 if has_attn else 1}"
    rename["mid_block.attentions.0"] = "middle_block.1"
    for j in range(2):
        rename[f"mid_block.resnets.{j}"] = f"middle_block.{2 * j}"
    resnet_parts = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                    "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
    ldm = {}
    for key, value in state.items():
        prefix = max((p for p in rename if key.startswith(p + ".")), key=len)
        rest = key[len(prefix) + 1:]
        if ".resnets." in prefix or (prefix.startswith("mid_block.resnets")):
            head, _, tail = rest.partition(".")
            rest = resnet_parts[head] + "." + tail
        ldm["model.diffusion_model." + rename[prefix] + "." + rest] = value
    assert set(convert_ldm_unet_checkpoint(ldm, dict(cfg))) == set(state)
    return ldm


@torch.no_grad()
def test_xportrait_appearance_key_mapping():
    source, target = _unet(seed=1), _unet(seed=2)
    state = source.state_dict()
    ldm = _to_ldm(state, source)
    xportrait = {"appearance_control_model." + k[len("model.diffusion_model."):]: v for k, v in ldm.items()}
    xportrait["control_model.input_blocks.0.0.weight"] = torch.zeros(1)  # other nets in the same file
    mapped = map_xportrait_appearance_keys(xportrait, target.config)
    assert set(mapped) == set(state) and all(torch.equal(mapped[k], state[k]) for k in state)
    load_appearance_weights(target, xportrait)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), state.values()))
    with pytest.raises(ValueError, match="no appearance-net weights"):
        map_xportrait_appearance_keys({"foo.bar": torch.zeros(1)}, target.config)
    with pytest.raises(ValueError, match="do not fit"):
        load_appearance_weights(target, {"down_blocks.0.resnets.0.conv1.weight": torch.zeros(1, 1, 1, 1)})
