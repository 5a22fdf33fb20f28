"""Diffusion models of the FG-Portrait generator, built on diffusers (an optional extra).

Importing this package imports diffusers; ``import fgp_fast`` does not.
"""
from ..errors import MissingDependencyError
try:
    import diffusers  # noqa: F401
except ImportError as exc:  # the clear error the rest of the package relies on
    raise MissingDependencyError("the diffusion renderer needs diffusers 0.42: pip install 'fgp_fast[diffusion]'") from exc

from .appearance import AppearanceNet
from .cuda_graph import CudaGraphStep
from .config import (SMALL_CONDITIONING_CHANNELS, sd15_unet_config, small_unet_config, tiny_taesd_config,
                     tiny_unet_config, tiny_vae_config)
from .flow_controlnet import check_flow_channels, flow_channels, make_flow_controlnet
from .fused_step import FusedStep
from .patch_autoencoder import PatchAutoencoder
from .loading import load_appearance_weights, load_sd15, map_xportrait_appearance_keys
from .reference_attention import (ReferenceReadProcessor, ReferenceWriteProcessor, install_reference_read,
                                  install_reference_write, self_attention_names)
from .temporal import add_temporal_layers

__all__ = ["SMALL_CONDITIONING_CHANNELS", "AppearanceNet", "CudaGraphStep", "FusedStep", "PatchAutoencoder",
           "ReferenceReadProcessor", "ReferenceWriteProcessor",
           "add_temporal_layers", "check_flow_channels", "flow_channels", "install_reference_read",
           "install_reference_write", "load_appearance_weights", "load_sd15", "make_flow_controlnet",
           "map_xportrait_appearance_keys", "sd15_unet_config", "small_unet_config", "self_attention_names",
           "tiny_taesd_config", "tiny_unet_config", "tiny_vae_config"]
