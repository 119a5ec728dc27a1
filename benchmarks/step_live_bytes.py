"""Peak live bytes of the tensors one training step creates, on CPU: what a GPU peak is made of, without a GPU.

Runs the step of :mod:`step_timer` (bf16 autocast forward, ``out.float().square().mean().backward()``) on a model
of :func:`llm_step.build` under a ``TorchDispatchMode`` that follows the storage of every op output until it is freed.
It prints, per mode, the peak of live step-created bytes (parameters, quantization states and other pre-step memory
excluded), the op at the peak and what is alive there grouped by producing op, shape, dtype and module (the
innermost module whose forward or checkpoint recomputation ran last, so in backward only a hint); for an
``ours_*``/``peft_*`` pair also their difference by shape and dtype.

What it cannot see: memory inside one op. ``bitsandbytes::gemm_4bit`` is counted with its dequantized weight
(CPU always, CUDA for more than 1536 rows dequantize and then ``F.linear``); other ops' workspaces are not counted.
The CUDA caching allocator also rounds: ``torch.cuda.max_memory_allocated`` counts whole blocks, up to 1 MiB more
than requested per block above 1 MiB, which depends on the allocation history (see ``requested_bytes`` in
``torch.cuda.memory_stats``). With ``--fake`` the attention may take another SDPA path (the causal mask made
explicitly): a few KB on the tiny model, the same for every mode.

    python benchmarks/step_live_bytes.py                               # tiny model, peft_qlora4 vs ours_qlora4
    python benchmarks/step_live_bytes.py --shape qwen2-1.5b --layers 1 --vocab 32000 --tokens 128  # ~2 min
    python benchmarks/step_live_bytes.py --shape qwen2-1.5b --tokens 1024 --fake    # the GPU benchmark's step, ~5 min
    python benchmarks/step_live_bytes.py --vit vit_b --batch 128 --fake --modes ours_lora,ours_lora_bf16base

``--vit ARCH`` measures the ViT step of :mod:`lora_step` (its modes, images of the arch's size) instead of the LLM.
Each mode's line also gives the bytes of its parameters, which the step peak leaves out.
"""
import argparse
import collections
import contextlib
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llm_step  # noqa: E402  (this folder)
import lora_step  # noqa: E402
from step_timer import step_loss  # noqa: E402

Label = Tuple[str, Tuple[int, ...], str, str, str]  # op, shape, dtype, phase, module


class LiveBytes(TorchDispatchMode):
    """Live bytes of the storages created by ops under this mode, with the peak and what is alive at it."""

    def __init__(self) -> None:
        super().__init__()
        self.live: Dict[int, Tuple[StorageWeakRef, int, Label]] = {}
        self.current = self.peak = 0
        self.peak_op = ''
        self.at_peak: List[Tuple[int, Label]] = []
        self.phase = 'fwd'
        self.modules: List[str] = []  # names of the modules whose forward is running, outermost first

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for key in [k for k, (ref, _, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        module = self.modules[-1] if self.modules else ''
        aliases = any(ret.alias_info is not None for ret in func._schema.returns)  # a view or an in-place result
        for tensor in [] if aliases else tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            if storage._cdata in inputs or storage._cdata in self.live:
                continue
            label = (str(func), tuple(tensor.shape), str(tensor.dtype).replace('torch.', ''), self.phase, module)
            self.live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes(), label)
            self.current += storage.nbytes()
        transient = []
        if func is torch.ops.bitsandbytes.gemm_4bit.default:  # holds the dequantized weight while it multiplies
            transient = [(args[2][0] * args[2][1] * args[0].element_size(),
                          ('(dequantized weight inside)', tuple(args[2]), str(args[0].dtype), self.phase, module))]
        if self.current + sum(n for n, _ in transient) > self.peak:
            self.peak = self.current + sum(n for n, _ in transient)
            self.peak_op = f'{func} ({self.phase}, {module})'
            self.at_peak = [(n, label) for _, n, label in self.live.values()] + transient
        return out

    def enter_module(self, name: str) -> None:
        """Push ``name``, first dropping modules a checkpoint recomputation left without their forward hook."""
        while self.modules and self.modules[-1] and not name.startswith(self.modules[-1] + '.'):
            self.modules.pop()
        self.modules.append(name)

    def exit_module(self, name: str) -> None:
        if self.modules and self.modules[-1] == name:
            self.modules.pop()


def measure(model: nn.Module, inputs: torch.Tensor) -> LiveBytes:
    """Live bytes of one training step of ``model`` on ``inputs`` (as :func:`step_timer.time_steps` runs it)."""
    tracker = LiveBytes()
    names = {module: name for name, module in model.named_modules()}
    hooks = [nn.modules.module.register_module_forward_pre_hook(lambda m, a: tracker.enter_module(names.get(m, ''))),
             nn.modules.module.register_module_forward_hook(lambda m, a, o: tracker.exit_module(names.get(m, '')))]
    try:
        with tracker:
            loss = step_loss(model, inputs)
            tracker.phase, tracker.modules = 'bwd', []
            loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    return tracker


def grouped(tracker: LiveBytes) -> collections.Counter:
    """Bytes alive at the peak per (op, shape, dtype, phase, module), module names without PEFT's wrappers."""
    groups = collections.Counter()
    for nbytes, (op, shape, dtype, phase, module) in tracker.at_peak:
        module = module.replace('base_model.model.', '').replace('.base_layer', '')
        groups[(op, shape, dtype, phase, module)] += nbytes
    return groups


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--modes', default='peft_qlora4,ours_qlora4')
    parser.add_argument('--shape', default='tiny', choices=sorted(llm_step.SHAPES))
    parser.add_argument('--layers', type=int, help='override the number of decoder layers')
    parser.add_argument('--vocab', type=int, help='override the vocabulary size')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--tokens', type=int, default=16)
    parser.add_argument('--rank', type=int, default=16)
    parser.add_argument('--gc', type=int, default=1, help='gradient checkpointing (1) or not (0)')
    parser.add_argument('--top', type=int, default=12)
    parser.add_argument('--vit', choices=sorted(lora_step.ARCHS), help="measure this ViT's step (lora_step modes)")
    parser.add_argument('--fake', action='store_true',
                        help='run the step on fake tensors (shapes only, no arithmetic): full-size models in minutes')
    args = parser.parse_args(argv)
    shape = dict(llm_step.SHAPES[args.shape])
    shape.update({k: v for k, v in (('num_hidden_layers', args.layers), ('vocab_size', args.vocab)) if v})
    llm_step.SHAPES['_measured'] = shape
    results = {}
    for mode in args.modes.split(','):
        torch.manual_seed(0)
        if args.vit:
            model = lora_step.prepare(mode, lora_step.build(args.vit), args.rank, 'cpu')
        else:
            model = llm_step.build(mode, '_measured', args.rank, 0.0, bool(args.gc), 'cpu')
        with FakeTensorMode(allow_non_fake_inputs=True) if args.fake else contextlib.nullcontext():
            if args.vit:
                size = lora_step.ARCHS[args.vit]['img_size']
                inputs = torch.randn(args.batch, 3, *(size if isinstance(size, tuple) else (size, size)),
                                     requires_grad=mode.startswith('floor'))
            else:
                inputs = torch.randint(0, shape['vocab_size'], (args.batch, args.tokens))
            tracker = measure(model, inputs)
        results[mode] = grouped(tracker)
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        print(f'== {mode}: peak {tracker.peak} B ({tracker.peak / 2**20:.3f} MiB) at {tracker.peak_op}; '
              f'parameters {param_bytes} B ({param_bytes / 2**20:.3f} MiB)')
        for label, nbytes in results[mode].most_common(args.top):
            print(f'  {nbytes:>12}  {label}')
    for mode in results:
        peer = mode.replace('ours', 'peft')
        if mode.startswith('ours') and peer in results:
            diff = collections.Counter()  # by shape, dtype and phase: the two name their ops and modules differently
            for sign, groups in ((1, results[mode]), (-1, results[peer])):
                for (_, shape, dtype, phase, _), nbytes in groups.items():
                    diff[(shape, dtype, phase)] += sign * nbytes
            print(f'== alive at peak, {mode} minus {peer}: {sum(diff.values())} B')
            for label, nbytes in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:args.top]:
                if nbytes:
                    print(f'  {nbytes:>12}  {label}')


if __name__ == '__main__':
    main()
