"""Module-name patterns used by ``LoRAConfig.targets``, ``exclude``, ``rank_pattern`` and ``alpha_pattern``.

Three forms, all matched against the dotted name of a module (``'blocks.3.attn.qkv'``):

* a bare name is a dotted *suffix*: ``'qkv'`` and ``'attn.qkv'`` both match ``'blocks.3.attn.qkv'`` (PEFT's list
  semantics: equal to the name or ending with ``'.' + pattern``);
* ``'re:<regex>'`` is a regular expression that must match the *whole* name (PEFT's string semantics);
* inside a bare name, a component ``'12-23'`` selects the integers 12..23 and ``'*'`` stands for one or more
  components, so ``'aggregator.frame_blocks.12-23.*.qkv'`` selects the qkv of frame blocks 12 to 23.
"""
import difflib
import re
from functools import lru_cache
from typing import Iterable, List, Sequence

_RANGE = re.compile(r'^(\d+)-(\d+)$')


@lru_cache(maxsize=None)
def compile_pattern(pattern: str) -> 're.Pattern[str]':
    """Compile one target pattern to a regex that is used with ``fullmatch``.

    Raises:
        ValueError: if the pattern is empty, a range is reversed, or a regex does not compile.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f'A target pattern must be a non-empty string, got {pattern!r}.')
    if pattern.startswith('re:'):
        try:
            return re.compile(pattern[3:])
        except re.error as err:
            raise ValueError(f'Target pattern {pattern!r} is not a valid regular expression: {err}.') from None
    parts = []
    for part in pattern.split('.'):
        match = _RANGE.match(part)
        if part == '*':
            parts.append(r'[^.]+(?:\.[^.]+)*')
        elif match:
            low, high = int(match.group(1)), int(match.group(2))
            if low > high:
                raise ValueError(f'Target pattern {pattern!r} has a reversed layer range {part!r}.')
            parts.append('(?:' + '|'.join(str(i) for i in range(low, high + 1)) + ')')
        else:
            parts.append(re.escape(part))
    return re.compile(r'(?:.*\.)?' + r'\.'.join(parts))


def name_matches(name: str, pattern: str) -> bool:
    """Whether the module name ``name`` is selected by ``pattern`` (see the module docstring)."""
    return compile_pattern(pattern).fullmatch(name) is not None


def first_match(name: str, patterns: Iterable[str]) -> 'str | None':
    """Return the first pattern of ``patterns`` that selects ``name``, or None."""
    for pattern in patterns:
        if name_matches(name, pattern):
            return pattern
    return None


def closest_names(pattern: str, names: Sequence[str], limit: int = 8) -> List[str]:
    """Names of ``names`` that look most like ``pattern``, for error messages.

    Compares the pattern both to full names and to their trailing components, so ``'qvk'`` suggests
    ``'blocks.0.attn.qkv'``.
    """
    key = pattern[3:] if pattern.startswith('re:') else pattern
    depth = key.count('.') + 1
    tails = {}
    for name in names:
        tails.setdefault('.'.join(name.split('.')[-depth:]), name)
    hits = difflib.get_close_matches(key, list(tails), n=limit, cutoff=0.5)
    found = [tails[hit] for hit in hits]
    found += [n for n in difflib.get_close_matches(key, list(names), n=limit, cutoff=0.5) if n not in found]
    return found[:limit]
