"""Hugging Face `tokenizer.json` (any of them) behind the `BaseTokenizer` interface, through the `tokenizers` package.

Two families of tokenizer.json exist, told apart by their decoder:
  - byte-level BPE (GPT-2, Llama 3, Qwen, Mistral's Tekken): every token is a string over GPT-2's 256 printable
    stand-ins for bytes;
  - SentencePiece-style (Llama 2, Mistral 7B, Gemma, Phi-3): "▁" stands for a space, `<0xNN>` pieces are raw bytes
    (byte fallback), and a decoder may drop the space the encoder prefixed to the text (a `Strip` after `Fuse`, or
    `Metaspace` with a prepend scheme).
Either way each id maps to its exact bytes, so the incremental UTF-8 decoder streams text without ever splitting a
character. Encoding is the `tokenizers` library's own, including its matching of added and special tokens in the
text, which is what transformers' tokenizers do (and what `apply_chat_template(..., tokenize=True)` relies on).
`vocab.json` + `merges.txt` (GPT-2 as first published) load as a byte-level tokenizer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol

from gpt_jax.errors import TokenizerError, check
from gpt_jax.text.tokenizer import BaseTokenizer, check_text

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


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


def _decoders(spec: dict | None) -> list[dict]:
    """The decoder steps of a tokenizer.json, a Sequence flattened."""
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        return [step for inner in spec.get("decoders", []) for step in _decoders(inner)]
    return [spec]


class DecodingRules:
    """How a tokenizer.json's decoder turns pieces into bytes, read from its steps."""

    def __init__(self, decoder: dict | None):
        steps = _decoders(decoder)
        types = [s.get("type") for s in steps]
        self.byte_level = "ByteLevel" in types
        self.byte_fallback = "ByteFallback" in types
        self.space = None  # the character that stands for a space (SentencePiece-style), if any
        self.drops_first_space = False
        for step in steps:
            if step.get("type") == "Metaspace":
                self.space = step.get("replacement", "▁")
                scheme = step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never")
                self.drops_first_space = scheme != "never"
            elif step.get("type") == "Replace" and step.get("content") == " ":
                self.space = step.get("pattern", {}).get("String", self.space)
            elif step.get("type") == "Strip" and step.get("content") == " " and step.get("start", 0) >= 1:
                self.drops_first_space = True
        known = {"ByteLevel", "ByteFallback", "Metaspace", "Replace", "Fuse", "Strip"}
        unknown = sorted(set(map(str, types)) - known)
        check(not unknown, TokenizerError, f"tokenizer.json decoder steps {unknown} are not supported")

    def piece_bytes(self, piece: str, stand_ins: dict[str, int]) -> bytes:
        if self.byte_level and all(c in stand_ins for c in piece):
            return bytes(stand_ins[c] for c in piece)
        match = _BYTE_PIECE.fullmatch(piece) if self.byte_fallback else None
        if match:
            return bytes([int(match.group(1), 16)])
        return (piece.replace(self.space, " ") if self.space else piece).encode()


def _adds_bos(hf_tokenizer, config: ModelIds) -> bool:
    """Whether the tokenizer's own post-processor puts the model's BOS first, as transformers' tokenizer then does
    (Llama 3's does; Qwen's adds nothing)."""
    plain = hf_tokenizer.encode("a", add_special_tokens=False).ids
    full = hf_tokenizer.encode("a", add_special_tokens=True).ids
    return len(full) > len(plain) and full[0] == config.bos_id and full[1 : 1 + len(plain)] == plain


class ModelIds(Protocol):
    """What a tokenizer takes from the model's config (`model.config.ModelConfig` has these)."""

    vocab_size: int
    bos_id: int
    eos_ids: tuple[int, ...]
    pad_id: int
    add_bos: bool


class HFTokenizer(BaseTokenizer):
    """Encode with `tokenizers`, decode through exact per-token bytes; special ids come from the model config."""

    special_strings_are_text = False  # `tokenizers` reads a special-token string in a text as that token

    def __init__(self, hf_tokenizer, config: ModelIds, files: dict[str, bytes]):
        self._hf = hf_tokenizer
        self._files = files
        vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        check(
            vocab_size <= config.vocab_size,
            TokenizerError,
            f"tokenizer has {vocab_size} tokens but the model's embedding has {config.vocab_size} rows",
        )
        spec = json.loads(hf_tokenizer.to_str())
        rules = DecodingRules(spec.get("decoder"))
        added = hf_tokenizer.get_added_tokens_decoder()
        special = {t.content for t in added.values() if t.special}
        stand_ins = byte_stand_ins()
        pieces = []
        for i in range(vocab_size):
            piece = hf_tokenizer.id_to_token(i)
            if piece is None or piece in special:
                pieces.append(b"")
            elif i in added:  # an added, non-special token: its text as written
                pieces.append(piece.encode())
            else:
                pieces.append(rules.piece_bytes(piece, stand_ins))
        super().__init__(
            bos_id=config.bos_id,
            eos_id=config.eos_ids[0] if config.eos_ids else -1,
            pad_id=config.pad_id,
            unk_id=-1,
            add_bos=_adds_bos(hf_tokenizer, config) if spec.get("post_processor") else config.add_bos,
            add_eos=False,
            token_bytes=pieces,
            leading_space=[rules.drops_first_space and p.startswith(b" ") for p in pieces],
            special_texts={t.content: i for i, t in added.items() if t.special},
        )

    @classmethod
    def from_directory(cls, directory: Path, config: ModelIds) -> HFTokenizer:
        try:
            import tokenizers
        except ImportError:
            raise TokenizerError(
                f"{directory} holds a Hugging Face tokenizer (tokenizer.json or vocab.json), which needs the "
                "optional 'tokenizers' package: pip install tokenizers"
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
            raise TokenizerError(f"{directory}: could not read the tokenizer: {e}") from None
        return cls(tok, config, {"tokenizer.json": data})

    def _encode_plain(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_with_special_tokens(self, text: str) -> list[int]:
        """The library matches special-token strings itself; splitting the text around them first would add a
        SentencePiece-style prefix space to every piece."""
        return self._encode_plain(check_text(text))

    def id_to_piece(self, i: int) -> str:
        return self._hf.id_to_token(int(i))

    def files(self) -> dict[str, bytes]:
        return dict(self._files)
