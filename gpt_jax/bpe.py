"""GPT-2's byte-level BPE behind the `BaseTokenizer` interface, through the optional `tokenizers` package.

SentencePiece cannot read GPT-2's `vocab.json` + `merges.txt` (or `tokenizer.json`). Each byte-level token is a
string over GPT-2's printable stand-ins for the 256 bytes, so every id maps to exact bytes and the same incremental
UTF-8 decoder serves streaming.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpt_jax.config import ModelConfig
from gpt_jax.errors import TokenizerError, check
from gpt_jax.tokenizer import BaseTokenizer


def byte_stand_ins() -> dict[str, int]:
    """GPT-2's map from printable stand-in character to byte value."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class ByteLevelBPETokenizer(BaseTokenizer):
    """Encode with `tokenizers`, decode through exact per-token bytes; special ids come from the model config."""

    def __init__(self, hf_tokenizer, config: ModelConfig, files: dict[str, bytes]):
        self._hf = hf_tokenizer
        self._files = files
        vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        check(
            vocab_size <= config.vocab_size,
            TokenizerError,
            f"tokenizer has {vocab_size} tokens but the model's embedding has {config.vocab_size} rows",
        )
        special = {t.content for t in hf_tokenizer.get_added_tokens_decoder().values() if t.special}
        stand_ins = byte_stand_ins()
        pieces = []
        for i in range(vocab_size):
            piece = hf_tokenizer.id_to_token(i)
            if piece is None or piece in special:
                pieces.append(b"")
            elif all(c in stand_ins for c in piece):
                pieces.append(bytes(stand_ins[c] for c in piece))
            else:  # an added, non-special token: its text as written
                pieces.append(piece.encode())
        super().__init__(
            bos_id=config.bos_id,
            eos_id=config.eos_ids[0] if config.eos_ids else -1,
            pad_id=config.pad_id,
            unk_id=-1,
            add_bos=config.add_bos,
            add_eos=False,
            token_bytes=pieces,
            leading_space=[False] * vocab_size,
            special_texts={t.content: i for i, t in hf_tokenizer.get_added_tokens_decoder().items() if t.special},
        )

    @classmethod
    def from_directory(cls, directory: Path, config: ModelConfig) -> ByteLevelBPETokenizer:
        try:
            import tokenizers
        except ImportError:
            raise TokenizerError(
                f"{directory} holds a GPT-2 byte-level BPE tokenizer, which needs the optional "
                "'tokenizers' package: pip install tokenizers"
            ) from None
        try:
            if (directory / "tokenizer.json").is_file():
                data = (directory / "tokenizer.json").read_bytes()
                tok = tokenizers.Tokenizer.from_str(data.decode())
            else:
                vocab, merges = directory / "vocab.json", directory / "merges.txt"
                check(merges.is_file(), TokenizerError, f"{merges}: missing (vocab.json needs merges.txt)")
                model = tokenizers.models.BPE.from_file(str(vocab), str(merges))
                tok = tokenizers.Tokenizer(model)
                tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
                tok.decoder = tokenizers.decoders.ByteLevel()
                vocab_ids = json.loads(vocab.read_text())
                tok.add_special_tokens([t for t in ("<|endoftext|>",) if t in vocab_ids])
                data = tok.to_str().encode()
        except TokenizerError:
            raise
        except Exception as e:  # tokenizers raises its own Exception subclasses
            raise TokenizerError(f"{directory}: could not read the byte-level BPE tokenizer: {e}") from None
        return cls(tok, config, {"tokenizer.json": data})

    def _encode_plain(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def id_to_piece(self, i: int) -> str:
        return self._hf.id_to_token(int(i))

    def files(self) -> dict[str, bytes]:
        return dict(self._files)
