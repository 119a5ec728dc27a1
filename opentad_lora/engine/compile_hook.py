"""Compiled training: ``torch.compile`` of the model's loss computation (``compile`` in configs, ``--compile``).

MMEngine 0.10.7's Runner compiles ``model.train_step`` as a whole when a config sets ``compile``, which also traces
the optimizer step and its Python-float learning rate. On the quickstart config (2 CPU cores, inductor) that took
348 s for the first iteration and 10-110 s for each of the next five, against 0.13 s eager. :class:`CompileHook`
compiles what a step spends its time on instead: the model's ``forward`` in ``mode='loss'`` (and, through
AOTAutograd, its backward). Optimizer, gradient clipping, hooks, validation and test stay eager, so an LR schedule
never recompiles and evaluation costs no compile time.

Regional compilation (``regional=...``) compiles each repeated block (a ViT's ``blocks.N``) instead of the whole
loss forward. Blocks of one class share their compiled code (dynamo keeps one cache per ``forward`` and guards on
the block's structure, not its identity), so the first iteration compiles one block instead of the whole unrolled
model; what lies between the blocks (embedding, neck, head, loss) runs eagerly. Blocks that differ in something
dynamo guards on (a Python float attribute that differs per block, an input's ``requires_grad`` or shape) get
graphs of their own, so during training the hook raises dynamo's per-code ``recompile_limit`` by the number of
blocks (no block silently falls back to eager) and turns off the LRU order of dynamo's cache entries: with it, the
backward's recomputation of a checkpointed block can pick another valid graph than its forward did (a dynamic one
compiled later) and ``torch.utils.checkpoint`` fails on the mismatch (pytorch/pytorch#166926).

The module itself is not replaced: only its ``forward`` attribute (and, in regional mode, each block's
``_compiled_call_impl``, the slot ``nn.Module.compile`` fills), for the duration of training. Parameter names,
``state_dict`` keys and DDP wrapping are those of the eager model, so checkpoints are ordinary ones (they load in an
eager ``tools/test.py``) and ``--resume`` works either way. ``tools/train.py`` turns a config's ``compile`` (``True``
or ``torch.compile`` keyword arguments, MMEngine's format, plus ``regional``) or ``--compile`` into this hook
(:func:`opentad_lora.engine.runner_utils.setup_compile`).
"""
import logging
import threading
from fnmatch import fnmatchcase
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn
from torch._dynamo.utils import counters

from opentad_lora.registry import HOOKS

Regional = Union[bool, str, Sequence[str], None]
Region = Tuple[nn.Module, Callable[..., Any]]
CUDA_GRAPH_MODES = ('reduce-overhead', 'max-autotune')  # torch.compile modes that capture CUDA graphs


def _is_block_list(module: nn.Module) -> bool:
    """A ModuleList/Sequential of >= 2 children of one class, each with sub-modules of its own (not bare layers)."""
    children = list(module.children())
    return (isinstance(module, (nn.ModuleList, nn.Sequential)) and len(children) >= 2
            and len({type(child) for child in children}) == 1 and next(children[0].children(), None) is not None)


def repeated_blocks(model: nn.Module, patterns: Optional[Sequence[str]] = None) -> List[Tuple[str, nn.Module]]:
    """The modules regional compilation compiles one by one, with their names, in ``named_modules`` order.

    Without ``patterns``: the children of every outermost ``nn.ModuleList``/``nn.Sequential`` whose children (at
    least two) share one class and have sub-modules, e.g. a ViT's ``blocks.0`` ... ``blocks.11``, not a list of
    LayerNorms. With ``patterns`` (``fnmatch`` patterns of module names, e.g. ``'backbone.blocks.*'``): the
    outermost modules whose names match one of them.
    """
    chosen: List[Tuple[str, nn.Module]] = []

    def inside_chosen(name: str) -> bool:
        return any(name == parent or name.startswith(f'{parent}.') for parent, _ in chosen)

    for name, module in model.named_modules():
        if not name or inside_chosen(name):
            continue
        if patterns is not None:
            if any(fnmatchcase(name, pattern) for pattern in patterns):
                chosen.append((name, module))
        elif _is_block_list(module):
            chosen.extend((f'{name}.{child_name}', child) for child_name, child in module.named_children())
    return chosen


class MainThreadCount:
    """Calls a compiled block with the main thread's intra-op thread count, which dynamo guards on.

    A checkpointed block's forward runs again in the backward, on autograd's device thread. On the H200 host that
    thread's ``torch.get_num_threads()`` differed from the main thread's, so the recomputation missed every guard
    ("GLOBAL_STATE changed: num_threads") and compiled each backbone graph a second time (AdaTAD: 4 graphs instead
    of 2). The count seen in the main thread is the one other threads get before they enter the compiled code.
    """

    def __init__(self, compiled: Callable[..., Any]) -> None:
        self.compiled = compiled
        self.threads = torch.get_num_threads()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            self.threads = torch.get_num_threads()
        elif torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self.compiled(*args, **kwargs)


def _regional_patterns(regional: Regional) -> Optional[Sequence[str]]:
    """``regional`` as patterns (None: find the blocks); refuses values of other types."""
    if regional is True:
        return None
    if isinstance(regional, str):
        return [regional]
    if isinstance(regional, Sequence) and regional and all(isinstance(p, str) for p in regional):
        return list(regional)
    raise TypeError(f'compile.regional must be True, False or module-name patterns (a string or a list of them, '
                    f"e.g. 'backbone.blocks.*'), got {regional!r}.")


def _set_dynamo_lru(on: bool) -> None:
    """Turn the LRU order of dynamo's cache entries on or off (a no-op on a torch without the switch)."""
    switch = getattr(torch._C._dynamo.eval_frame, '_set_lru_cache', None)
    if switch is not None:
        switch(on)


class LossForward:
    """A ``forward`` that runs compiled code for ``mode='loss'`` calls and eager code for every other call.

    Whole-model compilation passes ``compiled=torch.compile(eager)``. Regional compilation passes ``compiled=eager``
    and the ``regions`` (block, its compiled call): they are switched on for a loss call and stay on until
    :meth:`switch_regions` turns them off (the hook does so after each iteration), so that the backward's
    recomputation of checkpointed blocks runs the compiled code too; other calls run with them off.
    """

    def __init__(self, eager: Callable[..., Any], compiled: Callable[..., Any], regions: Sequence[Region] = ()) -> None:
        self.eager = eager
        self.compiled = compiled
        self.regions = list(regions)
        self._regions_on = False

    def switch_regions(self, on: bool) -> None:
        """Make the regional blocks run compiled (``on``) or eager (the slot ``nn.Module.__call__`` reads)."""
        if on != self._regions_on:
            for block, call in self.regions:
                block._compiled_call_impl = call if on else None
            self._regions_on = on

    def __call__(self, *args: Any, mode: str = 'tensor', **kwargs: Any) -> Any:
        self.switch_regions(mode == 'loss')
        function = self.compiled if mode == 'loss' else self.eager
        return function(*args, mode=mode, **kwargs)


@HOOKS.register_module()
class CompileHook(Hook):
    """Compile the model's loss forward for training; restore the eager ``forward`` after it.

    Args:
        regional: False: compile the whole loss forward. True: compile each repeated block (see
            :func:`repeated_blocks`) and run the rest eagerly. A pattern or list of patterns: compile the modules
            with matching names (``fnmatch``, outermost matches).
        **compile_kwargs: Keyword arguments of ``torch.compile`` (``backend``, ``mode``, ``dynamic``, ...).
    """

    priority = 'VERY_HIGH'  # after_train: the eager forward is back before exports copy the model

    def __init__(self, regional: Regional = False, **compile_kwargs: Any) -> None:
        if regional and compile_kwargs.get('mode') in CUDA_GRAPH_MODES:
            raise ValueError(f"compile.regional with mode={compile_kwargs['mode']!r}: each block would replay its "
                             'own CUDA graph into memory that earlier blocks\' outputs, kept for the backward, still '
                             'use (H200, AdaTAD with checkpointing: "accessing tensor output of CUDAGraphs that has '
                             "been overwritten\"). Use regional compilation without a mode, or mode='reduce-overhead' "
                             'with compile.regional=False (whole loss forward, docs/engine.md).')
        self.patterns = _regional_patterns(regional) if regional else None
        self.regional = bool(regional)
        self.compile_kwargs = compile_kwargs
        self._model: Optional[torch.nn.Module] = None
        self._graphs_before: Optional[int] = None
        self._recompile_limit = 0

    def _regions(self, model: nn.Module) -> List[Region]:
        blocks = repeated_blocks(model, self.patterns)
        if not blocks:
            wanted = (f'no module name matches {self.patterns}' if self.patterns else
                      'it has no nn.ModuleList/nn.Sequential of >= 2 blocks of one class')
            raise ValueError(f'compile.regional: nothing to compile in {type(model).__name__}: {wanted}. Name the '
                             "repeated modules (compile.regional=['backbone.blocks.*'], fnmatch patterns of names "
                             "in model.named_modules()) or set compile.regional=False to compile the whole loss "
                             'forward.')
        classes = sorted({type(block).__name__ for _, block in blocks})
        print_log(f'CompileHook: regional compilation of {len(blocks)} blocks ({", ".join(classes)}): '
                  f'{blocks[0][0]} ... {blocks[-1][0]}; the rest of the loss forward runs eagerly.',
                  logger='current')
        return [(block, MainThreadCount(torch.compile(block._call_impl, **self.compile_kwargs)))
                for _, block in blocks]

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        eager = model.forward
        if self.regional:
            regions = self._regions(model)
            model.forward = LossForward(eager, eager, regions)
            self._recompile_limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = self._recompile_limit + len(regions)
            _set_dynamo_lru(False)
        else:
            model.forward = LossForward(eager, torch.compile(eager, **self.compile_kwargs))
        self._model = model
        self._graphs_before = counters['stats']['unique_graphs']
        what = 'its repeated blocks' if self.regional else 'forward(mode="loss")'
        print_log(f'CompileHook: {type(model).__name__}: {what} compiled with torch.compile({self.compile_kwargs}); '
                  'the first iteration includes the compile time.', logger='current')

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if self._model is None:
            return
        forward = self._model.forward
        forward.switch_regions(False)  # nothing outside a training step runs the compiled blocks
        if self._graphs_before is not None:
            graphs = counters['stats']['unique_graphs'] - self._graphs_before
            self._graphs_before = None
            classes = len({type(block) for block, _ in forward.regions})
            # one graph per block class, or two where the first block's input needs no gradient
            if forward.regions and graphs > 2 * classes:
                print_log(f'CompileHook: the first iteration compiled {graphs} graphs for {len(forward.regions)} '
                          f'blocks of {classes} class(es): the blocks differ in what dynamo guards on (a Python '
                          'number attribute that differs per block, an input shape); TORCH_LOGS=recompiles names '
                          'the guards (docs/engine.md, "Regional compilation").', logger='current',
                          level=logging.WARNING)
            else:
                print_log(f'CompileHook: the first iteration compiled {graphs} graph(s).', logger='current')

    def after_train(self, runner) -> None:
        if self._model is not None and isinstance(self._model.__dict__.get('forward'), LossForward):
            self._model.forward.switch_regions(False)
            del self._model.forward  # back to the class's forward
        if self.regional and self._model is not None:
            torch._dynamo.config.recompile_limit = self._recompile_limit
            _set_dynamo_lru(True)  # dynamo's default
        self._model = None
