"""gpt_jax: a pure JAX/Flax GPT text-generation pipeline.

import gpt_jax
gen = gpt_jax.load()                        # the bundled Shakespeare model
out = gen.generate(["ROMEO:", "JULIET:"], max_new_tokens=64, seed=0)
"""

from gpt_jax.checkpoints.checkpoint import load, save
from gpt_jax.decoding.generator import GenerationResult, Generator
from gpt_jax.decoding.scoring import ScoreResult
from gpt_jax.decoding.settings import GenerationSettings
from gpt_jax.decoding.speculation.draft import DraftModel
from gpt_jax.decoding.speculation.prompt_lookup import PromptLookup
from gpt_jax.errors import CheckpointError, ConfigError, GptJaxError, InputError, TokenizerError
from gpt_jax.model.config import ModelConfig
from gpt_jax.model.presets import GPT2_SMALL, GPT2_TINY, LLAMA_1B, LLAMA_SMALL, LLAMA_TINY, PRESETS, SHAKESPEARE
from gpt_jax.parallel.sharding import make_mesh
from gpt_jax.text.detokenize import IncrementalDecoder
from gpt_jax.text.sentencepiece_training import train_tokenizer
from gpt_jax.text.tokenizer import BaseTokenizer, Tokenizer
from gpt_jax.util.compile_cache import enable_compile_cache

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
    "make_mesh",
    "save",
    "train_tokenizer",
]
__version__ = "0.1.0"
