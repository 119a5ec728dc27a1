"""Synthetic CLIP data in real formats: the classification family's PNG image folders plus CSV lists, prompt class
names, a small BPE merges file covering the prompts, and a seeded tiny CLIP in OpenAI's checkpoint layout."""
import csv
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

from ..classification.synthetic import PATTERNS, write_synthetic_image_folder

TINY_VOCAB_SIZE = 1024  # 512 byte symbols + 510 merges + start/end tokens: the text vocab of the synthetic configs
_HUES = ((0.04, 'red'), (0.11, 'orange'), (0.2, 'yellow'), (0.42, 'green'), (0.55, 'cyan'), (0.7, 'blue'),
         (0.8, 'purple'), (0.94, 'pink'), (1.01, 'red'))


def class_prompt_names(num_classes: int) -> List[str]:
    """Words for the classes of :func:`~opentad_lora.datasets.classification.class_pattern_image`: the colour of
    the class hue and its stripe pattern, e.g. ``'yellow vertical stripes'``."""
    names = []
    for label in range(num_classes):
        hue = label / num_classes
        colour = next(name for limit, name in _HUES if hue < limit)
        names.append(f'{colour} {PATTERNS[label % len(PATTERNS)]} stripes')
    return names


def write_tiny_bpe_vocab(path: Union[str, Path], texts: Sequence[str], vocab_size: int = TINY_VOCAB_SIZE) -> Path:
    """Write a merges file (OpenAI's text format: header line, one ``a b`` pair per line) in which every word of
    ``texts`` is one token, padded with merges of unused symbols to exactly ``vocab_size`` ids.

    Raises:
        ValueError: if the words need more merges than ``vocab_size`` allows.
    """
    from opentad_lora.models.clip.tokenizer import bpe_merge, bytes_to_unicode, pre_tokenize

    byte_chars = bytes_to_unicode()
    ranks: Dict[Tuple[str, str], int] = {}
    for text in texts:
        for piece in pre_tokenize(text):
            symbols = [byte_chars[b] for b in piece.encode('utf-8')]
            symbols[-1] += '</w>'
            # New merges rank last, so BPE first reproduces the current split, then joins its first two symbols.
            while len(split := bpe_merge(symbols, ranks)) > 1:
                ranks[(split[0], split[1])] = len(ranks)
    merges = list(ranks)
    budget = vocab_size - 512 - 2
    if len(merges) > budget:
        raise ValueError(f'The texts need {len(merges)} merges; a {vocab_size}-id vocabulary holds {budget}.')
    filler = [chr(c) for c in range(0x100, 0x144)]  # byte symbols of control bytes: absent from cleaned text
    extra = ((a, b) for a in filler for b in filler if (a, b) not in ranks)
    merges += [next(extra) for _ in range(budget - len(merges))]
    path = Path(path)
    # No trailing newline: OpenAI's reader keeps every line after the header, an empty last one included.
    path.write_text('#version: 0.2 (synthetic)\n' + '\n'.join(f'{a} {b}' for a, b in merges), encoding='utf-8')
    return path


def write_synthetic_clip_data(out_dir: Union[str, Path], num_classes: int = 4, train_per_class: int = 32,
                              val_per_class: int = 16, img_size: int = 32, noise_std: float = 20.0,
                              seed: int = 0, templates: Sequence[str] = ('a photo of {}.', )) -> Dict[str, object]:
    """Write ``out_dir/{train,val}/class_<k>/*.png``, ``{train,val}.csv`` (``path,label`` with class names),
    ``classnames.txt`` (prompt words, one per line) and ``bpe_tiny.txt`` (covers the prompts).

    Returns:
        ``dict(train=count, val=count, class_names=[...], bpe_path=...)``.
    """
    out = Path(out_dir)
    counts = write_synthetic_image_folder(out, num_classes, train_per_class, val_per_class, img_size, noise_std, seed)
    names = class_prompt_names(num_classes)
    for split in ('train', 'val'):
        with open(out / f'{split}.csv', 'w', newline='', encoding='utf-8') as handle:
            writer = csv.writer(handle)
            writer.writerow(['path', 'label'])
            for label in range(num_classes):
                for image in sorted((out / split / f'class_{label}').glob('*.png')):
                    writer.writerow([image.relative_to(out).as_posix(), f'class_{label}'])
    (out / 'classnames.txt').write_text('\n'.join(names) + '\n', encoding='utf-8')
    prompts = [template.format(name) for name in names for template in templates]
    bpe = write_tiny_bpe_vocab(out / 'bpe_tiny.txt', prompts)
    return dict(counts, class_names=names, bpe_path=str(bpe))
