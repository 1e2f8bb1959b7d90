"""Byte-level BPE with single-digit splitting (seed 001 section 4.4) and an <|endoftext|> token,
trained offline with `tokenizers` on the built corpus."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # Digits are split one by one before the byte-level split, so "2025" is four tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, path: Path) -> str:
    """Write tokenizer.json; return its SHA-256."""
    path.write_text(tok.to_str(pretty=False))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build the data set with `labkit data build`")
    return parse_tokenizer(path.read_bytes(), path)


def parse_tokenizer(raw: bytes, path: str | Path) -> Tokenizer:
    """A tokenizer from the bytes of `path` (read once, so what was checked is what is used)."""
    try:
        return Tokenizer.from_str(raw.decode())
    except Exception as err:  # the tokenizers library raises a bare Exception on a bad file
        from labkit.errors import TokenizerError

        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TokenizerError(
            f"{path} is not a tokenizer file ({first}): rebuild the data set with "
            "`labkit data build`, or point to a tokenizer.json written by `tokenizers`"
        ) from err
