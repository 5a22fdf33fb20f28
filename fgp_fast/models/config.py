"""Model configurations: SD1.5 sizes (latency benchmarks, real weights), tiny ones (tests) and the
small pixel-space one of the small-scale replication (``bench/train_ablation.py``)."""
from __future__ import annotations


def sd15_unet_config() -> dict:
    """The Stable Diffusion 1.5 UNet (diffusers' UNet2DConditionModel defaults are SD1.x's)."""
    return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def sd15_vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def tiny_unet_config() -> dict:
    """Two resolution levels, one attention level: the same code paths as SD1.5, in milliseconds."""
    return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def small_unet_config() -> dict:
    """The small-scale replication's UNet (``init: random-small``): pixel space through
    ``PatchAutoencoder`` (192 channels = 8x8 RGB patches), two levels, attention on both, so that
    reference attention reads the source at the full latent grid."""
    return dict(sample_size=8, in_channels=192, out_channels=192, layers_per_block=1, block_out_channels=(32, 64),
                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


# The small ControlNet's condition encoder: SD's four levels (8x down to the latents), narrower.
SMALL_CONDITIONING_CHANNELS = (8, 16, 32, 64)


def tiny_vae_config() -> dict:
    """An AutoencoderKL with SD's 8x downsampling (four levels) at toy width."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
                block_out_channels=(8, 8, 8, 8), norm_num_groups=4, scaling_factor=0.18215,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def tiny_taesd_config() -> dict:
    """An AutoencoderTiny (TAESD layout: 8x downsampling, 4 latent channels) at toy width."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, encoder_block_out_channels=(8, 8, 8, 8),
                decoder_block_out_channels=(8, 8, 8, 8), num_encoder_blocks=(1, 1, 1, 1),
                num_decoder_blocks=(1, 1, 1, 1))
