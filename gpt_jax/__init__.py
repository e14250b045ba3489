"""gpt_jax: a pure JAX/Flax GPT text-generation pipeline.

import gpt_jax
gen = gpt_jax.load()                        # the bundled Shakespeare model
out = gen.generate(["ROMEO:", "JULIET:"], max_new_tokens=64, seed=0)
"""

from gpt_jax.checkpoint import load, save
from gpt_jax.compile_cache import enable_compile_cache
from gpt_jax.config import GPT2_SMALL, GPT2_TINY, LLAMA_1B, LLAMA_SMALL, LLAMA_TINY, PRESETS, SHAKESPEARE, ModelConfig
from gpt_jax.errors import CheckpointError, ConfigError, GptJaxError, InputError, TokenizerError
from gpt_jax.generate import GenerationResult, Generator
from gpt_jax.scoring import ScoreResult
from gpt_jax.settings import GenerationSettings
from gpt_jax.speculative import DraftModel, PromptLookup
from gpt_jax.tokenizer import BaseTokenizer, IncrementalDecoder, Tokenizer, train_tokenizer

__all__ = [
    "GPT2_SMALL",
    "GPT2_TINY",
    "LLAMA_1B",
    "LLAMA_SMALL",
    "LLAMA_TINY",
    "BaseTokenizer",
    "PRESETS",
    "SHAKESPEARE",
    "CheckpointError",
    "ConfigError",
    "DraftModel",
    "GenerationResult",
    "GenerationSettings",
    "Generator",
    "GptJaxError",
    "IncrementalDecoder",
    "InputError",
    "ModelConfig",
    "PromptLookup",
    "ScoreResult",
    "Tokenizer",
    "TokenizerError",
    "enable_compile_cache",
    "load",
    "save",
    "train_tokenizer",
]
__version__ = "0.1.0"
