"""CLIP's byte-level BPE tokenizer, read from the packaged ``bpe_simple_vocab_16e6.txt.gz`` (no downloads).

The vocabulary is 256 byte symbols, the same with the end-of-word mark ``</w>``, the first 48,894 merges of the file,
then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407): 49,408 ids. Text is cleaned (``ftfy`` when
installed, HTML unescape, whitespace collapse, lower case), split by CLIP's regex, each piece byte-encoded and
merged by merge rank. A sequence is ``[sot] + tokens + [eot]``, zero-padded (or truncated, eot last) to the context.
"""
import gzip
import html
import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

BPE_FILENAME = 'bpe_simple_vocab_16e6.txt.gz'
BPE_ENV = 'OPENTAD_LORA_CLIP_BPE'
BPE_PACKAGES = ('open_clip', 'clip')  # open-clip-torch, openai-clip / clip-anytorch ship the file
NUM_MERGES = 49152 - 256 - 2
SOT, EOT = '<|startoftext|>', '<|endoftext|>'
PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
INSTALL_HINT = ('pip install --no-deps open-clip-torch  (it ships bpe_simple_vocab_16e6.txt.gz; --no-deps skips its '
                'torchvision dependency, the package is never imported)')


def find_bpe_vocab(bpe_path: Optional[Union[str, Path]] = None) -> Path:
    """The BPE merges file: ``bpe_path``, else ``$OPENTAD_LORA_CLIP_BPE``, else the copy inside an installed
    ``open_clip``/``clip`` package, located with ``importlib.util.find_spec`` (the package is not imported).

    Raises:
        FileNotFoundError: naming what was tried and how to install the vocabulary.
    """
    if bpe_path is not None:
        if not Path(bpe_path).is_file():
            raise FileNotFoundError(f'CLIP BPE vocabulary {bpe_path} does not exist.')
        return Path(bpe_path)
    if os.environ.get(BPE_ENV):
        return find_bpe_vocab(os.environ[BPE_ENV])
    for package in BPE_PACKAGES:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            if (Path(folder) / BPE_FILENAME).is_file():
                return Path(folder) / BPE_FILENAME
    raise FileNotFoundError(f'CLIP BPE vocabulary {BPE_FILENAME} not found (looked in ${BPE_ENV} and the packages '
                            f'{BPE_PACKAGES}). Install it: {INSTALL_HINT}; or pass bpe_path=.')


@lru_cache(maxsize=None)
def bytes_to_unicode() -> Dict[int, str]:
    """The reversible byte -> printable character map of byte-level BPE (GPT-2's): printable Latin-1 bytes map to
    themselves, the other bytes to ``chr(256 + n)`` in order."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def read_merges(path: Union[str, Path], max_merges: Optional[int] = NUM_MERGES) -> List[Tuple[str, str]]:
    """Merge pairs from a (gzipped) merges file: a header line (``#version: 0.2``; always skipped, as OpenAI's
    reader does), then one ``a b`` pair per line in rank order."""
    path = Path(path)
    try:
        raw = gzip.open(path).read() if path.suffix == '.gz' else path.read_bytes()
        lines = raw.decode('utf-8').split('\n')
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f'CLIP BPE vocabulary {path} cannot be read: {err}.') from None
    lines = lines[1:]
    merges = []
    for number, line in enumerate(lines[:max_merges] if max_merges else lines):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f'CLIP BPE vocabulary {path}: merge line {number + 2} is not two symbols: {line!r}.')
        merges.append((parts[0], parts[1]))
    return merges


def _clean(text: str) -> str:
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:  # ftfy only repairs mojibake; plain text tokenizes the same without it
        pass
    return ' '.join(html.unescape(html.unescape(text)).split()).lower()


def bpe_merge(symbols: List[str], ranks: Dict[Tuple[str, str], int]) -> List[str]:
    """Merge adjacent symbols, the pair of lowest rank first (every occurrence, left to right), until no pair of
    ``symbols`` is in ``ranks``."""
    word = list(symbols)
    while len(word) > 1:
        best = min(zip(word[:-1], word[1:]), key=lambda pair: ranks.get(pair, float('inf')))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


@lru_cache(maxsize=None)
def _compiled_pattern():
    try:
        import regex
    except ImportError:
        raise ImportError('The CLIP tokenizer needs the "regex" package: pip install regex') from None
    return regex.compile(PATTERN, regex.IGNORECASE)


def pre_tokenize(text: str) -> List[str]:
    """Clean ``text`` and split it into the pieces BPE merges (words, single digits, punctuation runs...)."""
    return _compiled_pattern().findall(_clean(text))


class CLIPTokenizer:
    """Tokenize text for CLIP's text encoder.

    Args:
        bpe_path: Merges file (see :func:`find_bpe_vocab`); a small custom file gives a small vocabulary
            (``512 + merges + 2`` ids) for tests.
        context_length: Length of the returned id rows (77 for OpenAI's models).
        max_merges: Merges taken from the file (OpenAI's 48,894; None = all).
    """

    def __init__(self, bpe_path: Optional[Union[str, Path]] = None, context_length: int = 77,
                 max_merges: Optional[int] = NUM_MERGES) -> None:
        _compiled_pattern()
        self.bpe_path = find_bpe_vocab(bpe_path)
        merges = read_merges(self.bpe_path, max_merges)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + '</w>' for s in symbols] + [a + b for a, b in merges] + [SOT, EOT]
        self.encoder = {token: index for index, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.sot_token_id, self.eot_token_id = self.encoder[SOT], self.encoder[EOT]
        self.vocab_size = len(vocab)
        self.context_length = context_length
        self._cache: Dict[str, List[str]] = {SOT: [SOT], EOT: [EOT]}

    def bpe(self, piece: str) -> List[str]:
        """The BPE symbols of one byte-encoded piece (cached)."""
        if piece not in self._cache:
            self._cache[piece] = bpe_merge([*piece[:-1], piece[-1] + '</w>'], self.bpe_ranks)
        return self._cache[piece]

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` without start/end tokens."""
        ids = []
        for piece in pre_tokenize(text):
            encoded = ''.join(self.byte_encoder[b] for b in piece.encode('utf-8'))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(encoded))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (padding zeros and start/end tokens dropped)."""
        special = {self.sot_token_id, self.eot_token_id}
        text = ''.join(self.decoder[int(i)] for i in ids if int(i) not in special and int(i) != 0)
        raw = bytearray(32 if c == ' ' else self.byte_decoder[c] for c in text.replace('</w>', ' '))
        return raw.decode('utf-8', errors='replace').strip()

    def __call__(self, texts: Union[str, Sequence[str]], context_length: Optional[int] = None,
                 truncate: bool = True) -> torch.Tensor:
        """(N, context_length) int64 ids: ``[sot] + encode(text) + [eot]``, zero padded.

        Raises:
            ValueError: if a text is too long and ``truncate`` is False (the text is named).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                if not truncate:
                    raise ValueError(f'Text {text[:40]!r} has {len(ids)} tokens, more than the context {length}.')
                ids = ids[:length - 1] + [self.eot_token_id]
            out[row, :len(ids)] = torch.tensor(ids)
        return out
