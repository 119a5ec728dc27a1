"""Tokenisation of CadQuery programs for CAD-Recode, with any HF tokenizer in a local folder.

The sequence layout is CAD-Recode's: ``[point slots] <|im_start|> code <|endoftext|>``; the point slots are not
tokens here (the model puts point embeddings there), padding uses ``<|im_end|>``. The real Qwen2 tokenizer has these
special tokens; ``train_code_tokenizer`` builds a small byte-level BPE with the same specials from a corpus of
programs, so tests and the quickstart run the same code path without downloading anything.
"""
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

START_TOKEN = '<|im_start|>'
END_TOKEN = '<|endoftext|>'
PAD_TOKEN = '<|im_end|>'
SPECIAL_TOKENS = (END_TOKEN, START_TOKEN, PAD_TOKEN)


def require_transformers():
    """Import ``transformers`` or raise an ImportError saying how to install it."""
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - transformers is the optional extra `llm`
        raise ImportError('CAD-Recode needs transformers: pip install "opentad_lora[llm]" '
                          '(or pip install transformers)') from err
    return transformers


class CADCodeTokenizer:
    """Encodes programs to ``<|im_start|> code <|endoftext|>`` ids and decodes generated ids back to code.

    Args:
        path: A local folder in the HF tokenizer layout (``tokenizer.json`` / ``tokenizer_config.json``), e.g. a
            Qwen2 checkpoint folder or the one written by ``tools/data/make_synthetic_cad.py``.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        transformers = require_transformers()
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f'Tokenizer folder {path} does not exist (expected an HF tokenizer layout).')
        self.path = path
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        ids = self.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
        missing = [tok for tok, i in zip(SPECIAL_TOKENS, ids)
                   if not isinstance(i, int) or self.tokenizer.convert_ids_to_tokens(i) != tok]
        if missing:
            raise ValueError(f'Tokenizer {path} lacks the special tokens {missing} that CAD-Recode uses.')
        self.end_id, self.start_id, self.pad_id = ids

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode(self, code: str, max_tokens: Union[int, None] = None) -> List[int]:
        """``[<|im_start|>] + code ids + [<|endoftext|>]``; with ``max_tokens`` the code ids are cut to that many."""
        ids = self.tokenizer.encode(code, add_special_tokens=False)
        if max_tokens is not None:
            ids = ids[:max_tokens]
        return [self.start_id, *ids, self.end_id]

    def decode(self, ids: Sequence[int]) -> str:
        """The program in generated ``ids``: everything before the first ``<|endoftext|>``, special tokens dropped."""
        ids = [int(i) for i in ids]
        if self.end_id in ids:
            ids = ids[:ids.index(self.end_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def pad(self, sequences: Sequence[Union[Sequence[int], Tensor]]) -> Tuple[Tensor, Tensor]:
        """Right-pad id sequences into ``(ids (B, T), mask (B, T))`` long tensors."""
        length = max(len(seq) for seq in sequences)
        ids = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
        return ids, mask


def train_code_tokenizer(codes: Sequence[str], out_dir: Union[str, Path], vocab_size: int = 512) -> Path:
    """Train a byte-level BPE with Qwen2's normaliser and pre-tokeniser on ``codes``; save it in the HF layout.

    The same splitting rules as Qwen2 (digits one by one, ...) mean the folder tokenises identically whether it is
    loaded as a generic tokenizer or, next to a Qwen2 ``config.json``, as ``Qwen2Tokenizer``. Byte-level BPE is
    lossless: decoding an encoded program gives it back exactly.
    """
    transformers = require_transformers()
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior='isolated', invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(codes), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_TOKEN,
                                                pad_token=PAD_TOKEN, additional_special_tokens=[START_TOKEN])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return out_dir
