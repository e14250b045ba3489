"""GPT-2's byte-level BPE behind the `Tokenizer` interface, through the optional `tokenizers` package.

SentencePiece cannot read GPT-2's `vocab.json` + `merges.txt` (or `tokenizer.json`). Each byte-level token is a
string over GPT-2's printable stand-ins for the 256 bytes, so every id maps to exact bytes and the same incremental
UTF-8 decoder serves streaming.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpt_jax.config import ModelConfig
from gpt_jax.errors import InputError, TokenizerError, check
from gpt_jax.tokenizer import Tokenizer


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


class ByteLevelBPETokenizer(Tokenizer):
    """Same interface as `Tokenizer`; encode with `tokenizers`, decode through exact per-token bytes."""

    def __init__(self, hf_tokenizer, config: ModelConfig, files: dict[str, bytes]):
        self._hf = hf_tokenizer
        self._files = files
        self.model_bytes = None
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        check(
            self.vocab_size <= config.vocab_size,
            TokenizerError,
            f"tokenizer has {self.vocab_size} tokens but the model's embedding has {config.vocab_size} rows",
        )
        self.bos_id = config.bos_id
        self.eos_id = config.eos_ids[0] if config.eos_ids else -1
        self.pad_id, self.unk_id = config.pad_id, -1
        self.add_bos, self.add_eos = config.add_bos and self.bos_id >= 0, False
        special = {t.content for t in hf_tokenizer.get_added_tokens_decoder().values() if t.special}
        stand_ins = byte_stand_ins()
        self._bytes, self._normal = [], []
        for i in range(self.vocab_size):
            piece = hf_tokenizer.id_to_token(i)
            if piece is None or piece in special:
                self._bytes.append(b"")
                self._normal.append(False)
            elif all(c in stand_ins for c in piece):
                self._bytes.append(bytes(stand_ins[c] for c in piece))
                self._normal.append(True)
            else:  # an added, non-special token: its text as written
                self._bytes.append(piece.encode())
                self._normal.append(True)
        self._strip_first_space = False

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
        except (OSError, ValueError, Exception) as e:  # tokenizers raises its own Exception subclasses
            if isinstance(e, TokenizerError):
                raise
            raise TokenizerError(f"{directory}: could not read the byte-level BPE tokenizer: {e}") from None
        return cls(tok, config, {"tokenizer.json": data})

    def files(self) -> dict[str, bytes]:
        return dict(self._files)

    def _encode_one(self, text: str) -> list[int]:
        check(isinstance(text, str), InputError, f"text must be a string, got {type(text).__name__}")
        ids = self._hf.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if self.add_bos else []) + ids

    def id_to_piece(self, i: int) -> str:
        return self._hf.id_to_token(int(i))
