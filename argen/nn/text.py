"""Text encoders for caption conditioning.

* :class:`WordTextEncoder`: a small word-level transformer trained jointly with the generator
  (the embedded default). Its vocabulary is the set of words of the training captions, stored
  in the config so an export rebuilds it. Words are split after Unicode normalisation (accents
  stripped, full-width forms folded, lowercase); unknown words map to ``<unk>`` and characters no
  word keeps (emoji, other scripts) are dropped, each with one warning per encoder.
* :class:`HFTextEncoder`: a frozen Hugging Face T5 or CLIP text encoder loaded from a local
  folder (``local_files_only``; needs the ``text`` extra). Its weights are not part of the
  generator's state dict; the export records the folder instead.

Both return (features (B, T, D), valid (B, T) bool), left-padded so that the last condition slot
(the one that predicts the first image token) always holds text.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
_WORD = re.compile(r"[a-z0-9]+")
# Unicode categories that carry meaning when dropped (letters, digits, pictographs such as emoji);
# punctuation, spaces and other symbols only separate words.
_MEANINGFUL = ("L", "N", "So")


def normalize(text: str) -> str:
    """NFKC (full-width and ligature forms), casefold, then accents stripped (NFKD minus combining
    marks): ``"Café Ｒｅｄ"`` -> ``"cafe red"``. ASCII text only changes case, so the vocabulary and
    token ids of ASCII captions (all of the shapes world's) are those of the plain lowercase split."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in unicodedata.normalize("NFKD", folded) if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    return _WORD.findall(normalize(text))


def dropped_characters(text: str) -> str:
    """The letters, digits and pictographs of ``text`` that no word keeps (emoji, other scripts)."""
    rest = _WORD.sub(" ", normalize(text))
    return "".join(dict.fromkeys(c for c in rest if unicodedata.category(c).startswith(_MEANINGFUL)))


def preview(text: str, *, width: int = 80) -> str:
    """``text`` quoted for a log line: cut to ``width`` characters, with its word count when cut."""
    if len(text) <= width:
        return repr(text)
    return f"{text[:width].rstrip()!r}… ({len(text.split())} words)"


def build_vocab(captions: Iterable[str], *, min_count: int = 1) -> list[str]:
    """Sorted words appearing at least ``min_count`` times in ``captions``."""
    counts = Counter(w for c in captions for w in words(c))
    return sorted(w for w, n in counts.items() if n >= min_count)


class WordTextEncoder(nn.Module):
    """Word embeddings + learned positions + a few bidirectional pre-norm transformer layers.

    vocab: the words (``<pad>``, ``<unk>`` and ``<eos>`` are added); max_length: caption slots
    (words beyond ``max_length - 1`` are cut with a warning; ``<eos>`` takes the last slot).

    frozen: keep the encoder at its (seeded, random) initialisation and train only what reads it (the
    conditioner's ``cap_proj`` and the generator), as LlamaGen trains on a frozen T5. Measured on a toy
    (``scripts/binding_toy.py``, issue 14): jointly trained, swapping the caption's words changes the loss
    of the token that needs them by nothing (to 3 decimals) for 750 steps; frozen, the words are read by
    step 500-750. Our reading: ~63 of 64 image tokens need no caption, so the common gradient turns the
    shared encoder into a constant and its LayerNorm squashes the words' differences (in a one-off check
    the relative difference of two captions' outputs fell from 0.76 to 0.02 within 50 steps). The weights
    are still saved (they are random, so an export needs them).
    """

    def __init__(self, *, vocab: Sequence[str] | None, max_length: int = 16, dim: int = 128, n_layer: int = 2,
                 n_head: int = 4, frozen: bool = False) -> None:
        super().__init__()
        if not vocab:
            raise ValueError("WordTextEncoder needs a vocabulary: argen-train fills generator.condition.encoder."
                             "vocab from the training captions of the code cache; pass vocab=[...] otherwise")
        self.vocab = list(vocab)
        self.itos = [PAD, UNK, EOS, *self.vocab]
        self.num_special = len((PAD, UNK, EOS))  # the ids below it
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("the vocabulary has duplicate words")
        self.max_length = max_length
        self.out_dim = dim
        self.embedding = nn.Embedding(len(self.itos), dim)
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, n_head, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(n_layer))
        self.norm = nn.LayerNorm(dim)
        self._warned: set[str] = set()
        self._ids: dict[str, list[int]] = {}
        self.frozen = bool(frozen)
        if self.frozen:
            self.requires_grad_(False)

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """ids (B, T) int64 and valid (B, T) bool, left-padded, ending in ``<eos>``."""
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            seq = self._ids.get(text)
            if seq is None:
                seq = self._sequence(text)
                if len(self._ids) < self.CACHE_SIZE:
                    self._ids[text] = seq
            ids[row, self.max_length - len(seq):] = torch.tensor(seq)
        return ids, ids != 0

    CACHE_SIZE = 200_000  # captions whose ids are kept (a training set's captions repeat every epoch)

    def _sequence(self, text: str) -> list[int]:
        """The ids of one caption (warning about what is cut, dropped or unknown, once per kind)."""
        toks = words(text)
        if len(toks) > self.max_length - 1:
            self._warn_once("cut", f"caption cut to its first {self.max_length - 1} words (max_length "
                                   f"{self.max_length} slots, one for {EOS}): {preview(text)}")
            toks = toks[: self.max_length - 1]
        dropped = dropped_characters(text)
        if dropped:
            self._warn_once("dropped", f"characters {dropped!r} of {preview(text)} are outside the word "
                                       f"alphabet (a-z, 0-9 after Unicode normalisation) and were dropped")
        unknown = [w for w in toks if w not in self.stoi]
        if unknown:
            self._warn_once("unknown", f"word {unknown[0]!r} of {preview(text)} is not in the text encoder's "
                                       f"vocabulary ({len(self.vocab)} words); it is read as {UNK}")
        return [self.stoi.get(w, 1) for w in toks] + [self.stoi[EOS]]

    def _warn_once(self, kind: str, message: str) -> None:
        """The first message of each kind is a warning; later ones go to DEBUG (one line per batch
        would bury the log, and the first names an example)."""
        if kind in self._warned:
            log.debug(message)
            return
        self._warned.add(kind)
        log.warning("%s (shown once; later ones at DEBUG level)", message)

    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        ids, valid = self.tokenize(texts)
        ids, valid = ids.to(self.embedding.weight.device), valid.to(self.embedding.weight.device)
        h = self.embedding(ids) + self.position[None]
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=~valid)
        return self.norm(h) * valid[..., None], valid  # (B, T, D)


class HFTextEncoder(nn.Module):
    """A frozen Hugging Face text encoder from a local folder.

    path: folder with the tokenizer and model files (``save_pretrained`` layout); kind: ``t5``
    (encoder last hidden state, LlamaGen uses FLAN-T5-XL, 120 tokens x 2048) or ``clip``
    (text model last hidden state); max_length: token slots; out_dim: the model's hidden size
    (read from its config when None).
    """

    def __init__(self, *, path: str, kind: str = "t5", max_length: int = 120, out_dim: int | None = None) -> None:
        super().__init__()
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"text encoder folder '{folder}' does not exist; download the model once "
                                    f"(e.g. huggingface-cli download google/flan-t5-xl --local-dir {folder}) "
                                    f"and pass its path; argen never downloads at run time")
        try:
            import transformers
        except ImportError as e:
            raise ImportError("HFTextEncoder needs transformers: pip install 'argen[text]'") from e
        if kind not in ("t5", "clip"):
            raise ValueError(f"kind must be 't5' or 'clip', got {kind!r}")
        self.path, self.kind, self.max_length = str(folder), kind, max_length
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        cls = transformers.T5EncoderModel if kind == "t5" else transformers.CLIPTextModel
        model = cls.from_pretrained(str(folder), local_files_only=True).eval().requires_grad_(False)
        self._model: list[Any] = [model]  # a list keeps the frozen weights out of the state dict
        hidden = int(model.config.d_model if kind == "t5" else model.config.hidden_size)
        if out_dim is not None and out_dim != hidden:
            raise ValueError(f"out_dim {out_dim} does not match the text model's hidden size {hidden}")
        self.out_dim = hidden

    def _apply(self, fn: Any, recurse: bool = True) -> HFTextEncoder:  # .to(device) moves the frozen model too
        self._model[0]._apply(fn)
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        model = self._model[0]
        batch = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(next(model.parameters()).device)
        feats = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        valid = batch.attention_mask.bool()
        # Left-align to the end (LlamaGen moves the valid T5 tokens to the end of the 120 slots).
        order = torch.argsort(valid.int(), dim=1, stable=True)
        feats = torch.gather(feats, 1, order[..., None].expand_as(feats))
        return feats.float(), torch.gather(valid, 1, order)
