"""Training with optax: corpus windows, the train step, resumable checkpoints, evaluation.

Imports: `checkpoints`, `decoding` and everything below them. `TrainConfig` is importable without optax (the
command line builds its flags from it); `train` loads the trainer when first asked for.
"""

from gpt_jax.training.config import TrainConfig

__all__ = ["TrainConfig", "train"]


def __getattr__(name):
    if name == "train":
        from gpt_jax.training.trainer import train

        return train
    raise AttributeError(f"module 'gpt_jax.training' has no attribute {name!r}")
