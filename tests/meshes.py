"""Random meshes and cameras for tests: they live in the package, beside the backend contract."""
from fgp_fast.ops.scenes import (blob_scene, deform, icosphere, look_at, quad_scene, random_blob, random_camera,
                                 random_rotation, soup_scene, triangle_soup)

__all__ = ["blob_scene", "deform", "icosphere", "look_at", "quad_scene", "random_blob", "random_camera",
           "random_rotation", "soup_scene", "triangle_soup"]
