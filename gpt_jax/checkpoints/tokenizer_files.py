"""Which tokenizer a model directory holds: `tokenizer.model` (SentencePiece), else a Hugging Face `tokenizer.json`
(byte-level or SentencePiece-style) or GPT-2's `vocab.json` + `merges.txt`, else none. Own and Hugging Face
directories both load through here.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpt_jax.errors import CheckpointError, TokenizerError, check
from gpt_jax.model.config import ModelConfig
from gpt_jax.text.chat import TEMPLATE_FILE, TOKENIZER_CONFIG, ChatTemplate
from gpt_jax.text.hf_tokenizer import HFTokenizer
from gpt_jax.text.tokenizer import BaseTokenizer, Tokenizer

SENTENCEPIECE_FILE = "tokenizer.model"


def load_tokenizer(directory: Path, config: ModelConfig, exact: bool = True) -> BaseTokenizer | None:
    """The directory's tokenizer, if any, carrying the directory's chat template, if any. Its vocabulary must fit in
    the embedding's rows (Hugging Face models often pad the embedding), and with `exact` a SentencePiece vocabulary
    must equal them (as this project trains them)."""
    path = directory / SENTENCEPIECE_FILE
    source = path if path.is_file() else directory
    try:
        if path.is_file():
            tok = Tokenizer(path, add_bos=config.add_bos)
        elif (directory / "tokenizer.json").is_file() or (directory / "vocab.json").is_file():
            tok = HFTokenizer.from_directory(directory, config)
        else:
            return None
    except TokenizerError as e:
        raise CheckpointError(f"{source}: {e}") from None
    exact = exact and isinstance(tok, Tokenizer)  # a tokenizer.json often has fewer entries than the embedding
    tok.chat_template = ChatTemplate.from_directory(directory)
    check(
        tok.vocab_size == config.vocab_size or (not exact and tok.vocab_size < config.vocab_size),
        CheckpointError,
        f"{source}: tokenizer has {tok.vocab_size} pieces but the model's embedding has {config.vocab_size} rows",
    )
    return tok


def tokenizer_files(tok: BaseTokenizer) -> dict[str, bytes]:
    """What a model directory stores for `tok`: its own files, its chat template, and a `tokenizer_config.json`
    with which transformers' `AutoTokenizer` encodes text as `tok.encode` does, BOS included (with a chat template,
    special-token strings in a text are read as tokens there, as the rendered template needs)."""
    files = dict(tok.files())
    if tok.chat_template is not None:
        files[TEMPLATE_FILE] = tok.chat_template.source.encode()
    files[TOKENIZER_CONFIG] = (json.dumps(tok.transformers_fields(), indent=1, ensure_ascii=False) + "\n").encode()
    return files
