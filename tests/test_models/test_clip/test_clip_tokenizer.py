"""CLIP BPE tokenizer: hand-computed ids on a tiny vocabulary, OpenAI's reference on the real one."""
import importlib.util
from pathlib import Path

import pytest
import torch

from opentad_lora.datasets.clip import TINY_VOCAB_SIZE, write_tiny_bpe_vocab
from opentad_lora.models.clip import CLIPTokenizer, find_bpe_vocab
from opentad_lora.models.clip.tokenizer import BPE_ENV

SOT, EOT = 516, 517  # 512 byte symbols + 4 merges, then the two special tokens


@pytest.fixture
def tiny_vocab(tmp_path: Path) -> Path:
    path = tmp_path / 'merges.txt'
    path.write_text('#version: 0.2\nh e\nl l\nhe ll\nhell o</w>', encoding='utf-8')
    return path


def test_tiny_vocabulary_gives_hand_computed_ids(tiny_vocab):
    tok = CLIPTokenizer(tiny_vocab, context_length=8)
    assert (tok.vocab_size, tok.sot_token_id, tok.eot_token_id) == (518, SOT, EOT)
    # 'hello' -> h e l l o</w> -> he ll -> hell -> hello</w> (merge 3 -> id 512 + 3). Single symbols with the
    # end-of-word mark come after the 256 plain byte symbols; printable bytes come first from '!' (33):
    # ',' (44) -> 256 + 11, '!' -> 256 + 0; 'x' (120) has no merge: 'x</w>' -> 256 + 87.
    assert tok.encode('Hello,   HELLO! x') == [515, 267, 515, 256, 343]
    assert tok('hello, hello!').tolist() == [[SOT, 515, 267, 515, 256, EOT, 0, 0]]
    assert tok('hello ' * 10, context_length=4).tolist() == [[SOT, 515, 515, EOT]]
    with pytest.raises(ValueError, match='more than the context 4'):
        tok('hello ' * 10, context_length=4, truncate=False)
    # 'ab' has no merges: byte symbols a, b</w> -> decode joins them back.
    assert tok.decode(tok('hello, ab!')[0]) == 'hello , ab !'


def test_synthetic_vocabulary_makes_every_prompt_word_one_token(tmp_path):
    prompts = ['a photo of green vertical stripes.', 'a photo of red checker stripes.']
    tok = CLIPTokenizer(write_tiny_bpe_vocab(tmp_path / 'bpe.txt', prompts), context_length=16)
    assert tok.vocab_size == TINY_VOCAB_SIZE
    ids = tok(prompts)
    assert [int((row != 0).sum()) for row in ids] == [9, 9]  # sot + 6 words + '.' + eot
    assert [tok.decode(row) for row in ids] == ['a photo of green vertical stripes .',
                                                'a photo of red checker stripes .']


def test_missing_vocabulary_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(BPE_ENV, str(tmp_path / 'nope.txt.gz'))
    with pytest.raises(FileNotFoundError, match='nope.txt.gz'):
        find_bpe_vocab()
    monkeypatch.delenv(BPE_ENV)
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(FileNotFoundError, match='pip install --no-deps open-clip-torch'):
        CLIPTokenizer()


def real_vocab() -> Path:
    try:
        return find_bpe_vocab()
    except FileNotFoundError:
        pytest.skip('CLIP BPE vocabulary not installed (pip install --no-deps open-clip-torch)')


def test_real_vocabulary_matches_openai_ids():
    tok = CLIPTokenizer(real_vocab())
    assert (tok.vocab_size, tok.sot_token_id, tok.eot_token_id) == (49408, 49406, 49407)
    # CLIP's well-known ids: a=320, photo=1125, of=539, dog=1929, '.'=269.
    assert tok('a photo of a dog.')[0, :9].tolist() == [49406, 320, 1125, 539, 320, 1929, 269, 49407, 0]


def test_real_vocabulary_matches_the_reference_tokenizer(monkeypatch):
    """OpenAI's SimpleTokenizer as open_clip ships it, loaded from its file (the package itself needs
    torchvision, which cannot be imported here)."""
    bpe = real_vocab()
    pytest.importorskip('ftfy')
    reference_file = bpe.parent / 'tokenizer.py'
    if not reference_file.is_file() or bpe.parent.name != 'open_clip':
        pytest.skip('open_clip tokenizer.py not next to the vocabulary')
    monkeypatch.setenv('TOKENIZERS_PARALLELISM', 'false')  # the reference sets it on import; restored afterwards
    spec = importlib.util.spec_from_file_location('open_clip_reference_tokenizer', reference_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = module.SimpleTokenizer(str(bpe))
    texts = ['a photo of a dog.', "Héllo   WORLD!! it's 2024 — naïve café 日本語 😀", 'x' * 300,
             '&amp; html &lt;b&gt; tags', 'Rocky-Mountain   bighorn_sheep (2)', '']
    assert torch.equal(CLIPTokenizer(bpe)(texts), reference(texts))
