"""Training (`fgp train`): config in one YAML file, stage 1 / stage 2 on Hugging Face accelerate.

``from fgp_fast.training import load_config, train``; accelerate and diffusers are imported only
when training starts.
"""
from .config import TrainConfig, load_config


def train(*args, **kwargs):
    from .trainer import train as _train

    return _train(*args, **kwargs)


__all__ = ["TrainConfig", "load_config", "train"]
