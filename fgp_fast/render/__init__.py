"""Renderers: a textured mesh renderer and photo baking (synthetic portraits), and the learning-free warp renderer."""
from .fill import distance_to_mask, jump_flood_distance, pushpull_fill, smooth_falloff
from .renderer import Renderer, WarpPortraitRenderer
from .textured import BakedTexture, bake_texture, procedural_texture, render_textured, sample_texture
from .warp import WarpRenderer, WarpResult, warp_render

__all__ = ["render_textured", "bake_texture", "BakedTexture", "procedural_texture", "sample_texture",
           "WarpRenderer", "WarpResult", "warp_render", "pushpull_fill", "distance_to_mask", "jump_flood_distance",
           "smooth_falloff", "Renderer", "WarpPortraitRenderer"]
