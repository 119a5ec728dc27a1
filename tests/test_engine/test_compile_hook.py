"""CompileHook with inductor (C++ kernels on CPU): the compiled LoRA run trains like the eager one, only the loss
forward is compiled, and its checkpoint is an ordinary one that an eager model loads.

Inductor fuses and reorders float operations, so losses are compared with rtol 1e-4 (measured differences: ~1e-7).
"""
import re
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch._inductor.config
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn
from torch._dynamo.utils import counters
from torch.utils.checkpoint import checkpoint

from opentad_lora.engine import CompileHook, LoRACheckpointHook, load_checkpoint_file  # noqa: F401  (registers hooks)
from opentad_lora.engine.compile_hook import LossForward, MainThreadCount, repeated_blocks
from opentad_lora.peft import apply_lora

LOSS_RTOL = 1e-4


def _losses(runner) -> np.ndarray:
    return np.asarray(runner.message_hub.get_scalar('train/loss').data[0])


def test_inductor_compiled_lora_run_matches_eager_and_saves_eager_checkpoints(tmp_path, make_runner, toy_net):
    hooks = [dict(type='LoRACheckpointHook')]
    eager = make_runner(tmp_path / 'eager', custom_hooks=hooks, randomness=dict(seed=0))
    eager.train()

    torch._dynamo.reset()
    compiled = make_runner(tmp_path / 'compiled', custom_hooks=[*hooks, dict(type='CompileHook')],
                           randomness=dict(seed=0))
    with torch._inductor.config.patch(compile_threads=1):  # in process: no pool of compile workers to start
        compiled.train()
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] >= 1  # dynamo traced the loss forward
    assert 'forward' not in compiled.model.__dict__  # the eager forward is back after training

    assert len(_losses(compiled)) == 8 and _losses(compiled)[-1] < _losses(compiled)[0]
    np.testing.assert_allclose(_losses(compiled), _losses(eager), rtol=LOSS_RTOL, atol=0)

    # The compiled run's checkpoint has the eager model's keys and loads strictly into a fresh eager model.
    state = load_checkpoint_file(tmp_path / 'compiled' / 'epoch_2.pth')['state_dict']
    assert set(state) == set(load_checkpoint_file(tmp_path / 'eager' / 'epoch_2.pth')['state_dict'])
    fresh = make_runner(tmp_path / 'fresh', custom_hooks=[*hooks, dict(type='CheckpointMatchHook')])
    fresh.load_checkpoint(str(tmp_path / 'compiled' / 'epoch_2.pth'), strict=True)
    x = torch.randn(5, 2)
    fresh.model.eval()
    compiled.model.eval()
    torch.testing.assert_close(fresh.model(x), compiled.model(x))


def test_setup_compile_moves_the_config_option_into_the_hook():
    from opentad_lora.engine import setup_compile
    cfg = dict(compile=dict(backend='aot_eager', dynamic=True), custom_hooks=[dict(type='LoRACheckpointHook')])
    assert setup_compile(cfg) is True
    assert cfg['compile'] is False  # the Runner must not also compile train_step
    assert cfg['custom_hooks'][-1] == dict(type='opentad_lora.CompileHook', backend='aot_eager', dynamic=True)
    flag_only = dict(custom_hooks=[])
    assert setup_compile(flag_only, flag=True) is True
    assert flag_only['custom_hooks'] == [dict(type='opentad_lora.CompileHook')]
    plain = dict(custom_hooks=[])
    assert setup_compile(plain) is False and plain == dict(custom_hooks=[], compile=False)
    regional = dict(compile=dict(regional=['backbone.blocks.*'], dynamic=False))
    assert setup_compile(regional) is True
    assert regional['custom_hooks'] == [dict(type='opentad_lora.CompileHook', regional=['backbone.blocks.*'],
                                             dynamic=False)]
    hook = CompileHook(**{k: v for k, v in regional['custom_hooks'][0].items() if k != 'type'})
    assert hook.patterns == ['backbone.blocks.*'] and hook.compile_kwargs == dict(dynamic=False)


class ToyBlock(nn.Module):
    """Pre-norm residual MLP block; LoRA goes on ``fc1``/``fc2``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ToyBlockNet(BaseModel):
    """Stem, ``depth`` LoRA blocks (checkpointed around each block, as our ViTs do, with ``with_cp``), norm, head."""

    def __init__(self, depth: int = 4, dim: int = 8, with_cp: bool = False) -> None:
        super().__init__()
        self.stem = nn.Linear(2, dim)
        self.blocks = nn.ModuleList([ToyBlock(dim) for _ in range(depth)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])  # leaf layers: never a regional block
        self.head = nn.Linear(dim, 1)
        self.with_cp = with_cp
        apply_lora(self, dict(r=2, alpha=4, targets=['fc1', 'fc2'], modules_to_save=['stem', 'norms', 'head']))

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        x = self.stem(torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.with_cp else block(x)
        out = self.head(self.norms[1](self.norms[0](x))).squeeze(-1)
        if mode == 'loss':
            return dict(loss=((out - torch.stack(data_samples)) ** 2).mean())
        return out


def _block_net(**kwargs) -> ToyBlockNet:
    torch.manual_seed(0)
    return ToyBlockNet(**kwargs)


def test_repeated_blocks_picks_the_outermost_lists_of_one_block_class():
    net = nn.Module()
    net.layers = nn.Sequential(*[ToyBlockNet(depth=2) for _ in range(3)])  # lists inside blocks: outermost only
    net.norms = nn.ModuleList([nn.LayerNorm(4), nn.LayerNorm(4)])  # bare layers
    net.mixed = nn.ModuleList([ToyBlock(4), nn.Sequential(ToyBlock(4), ToyBlock(4))])  # two classes: look inside
    net.stages = nn.Sequential(*[nn.Sequential(ToyBlock(4), ToyBlock(4)) for _ in range(2)])  # a list of lists
    assert [name for name, _ in repeated_blocks(net)] == ['layers.0', 'layers.1', 'layers.2', 'mixed.1.0',
                                                          'mixed.1.1', 'stages.0', 'stages.1']
    assert [name for name, _ in repeated_blocks(net, ['*.blocks.*'])] == [
        f'layers.{i}.blocks.{j}' for i in range(3) for j in range(2)]
    assert [name for name, _ in repeated_blocks(net, ['mixed.*'])] == ['mixed.0', 'mixed.1']


def test_repeated_blocks_of_our_vit_are_its_transformer_blocks():
    from opentad_lora.models.backbones.vit import VisionTransformer
    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=3, num_heads=2)
    apply_lora(vit, dict(r=2, targets=['qkv', 'proj', 'fc1', 'fc2']))
    blocks = repeated_blocks(vit)
    assert [name for name, _ in blocks] == ['blocks.0', 'blocks.1', 'blocks.2']
    assert all(block is vit.blocks[i] for i, (_, block) in enumerate(blocks))


@pytest.mark.parametrize('regional, message', [
    (True, 'ToyLoRANet: it has no nn.ModuleList/nn.Sequential of >= 2 blocks of one class'),
    (['encoder.*'], "ToyLoRANet: no module name matches ['encoder.*']"),
])
def test_regional_without_blocks_says_what_to_do(regional, message, tmp_path, make_runner):
    runner = make_runner(tmp_path, custom_hooks=[dict(type='CompileHook', regional=regional)])
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        runner.train()
    assert "compile.regional=['backbone.blocks.*']" in str(error.value)
    assert 'compile.regional=False' in str(error.value)
    with pytest.raises(TypeError, match='compile.regional must be True, False or module-name patterns'):
        CompileHook(regional=3)
    with pytest.raises(ValueError, match="compile.regional with mode='reduce-overhead'.*compile.regional=False"):
        CompileHook(regional=True, mode='reduce-overhead')
    from opentad_lora.engine import setup_compile  # tools/train.py: refused before the Runner is built
    with pytest.raises(ValueError, match="compile.regional with mode='max-autotune'"):
        setup_compile(dict(compile=dict(regional=['backbone.blocks.*'], mode='max-autotune')))


@pytest.mark.parametrize('with_cp', [False, True], ids=['plain', 'with_cp'])
def test_regional_compiles_the_block_once_and_trains_like_eager(with_cp, tmp_path, make_runner):
    """``aot_eager`` (inductor's cold C++ compile of even this block costs ~15 s here; benchmarks/compile_time.py
    runs regional inductor): the graphs are inductor's input, run by aten ops, so losses equal eager's to 1e-6."""
    eager = make_runner(tmp_path / 'eager', model=_block_net(with_cp=with_cp))
    eager.train()

    torch._dynamo.reset()
    counters.clear()
    hook = dict(type='CompileHook', regional=True, backend='aot_eager')
    compiled = make_runner(tmp_path / 'compiled', model=_block_net(with_cp=with_cp),
                           custom_hooks=[dict(type='LoRACheckpointHook'), hook])
    compiled.train()
    # 4 blocks, 8 iterations (and the recomputation of checkpointed blocks): one frame, one graph
    assert counters['stats']['unique_graphs'] == 1
    assert counters['frames']['ok'] == 1
    assert not counters['graph_break']
    assert all(block._compiled_call_impl is None for block in compiled.model.blocks)  # eager again after training
    assert 'forward' not in compiled.model.__dict__
    np.testing.assert_allclose(_losses(compiled), _losses(eager), rtol=1e-6, atol=0)

    state = load_checkpoint_file(tmp_path / 'compiled' / 'epoch_2.pth')['state_dict']
    assert set(state) == set(load_checkpoint_file(tmp_path / 'eager' / 'epoch_2.pth')['state_dict'])
    assert not any('_orig_mod' in key for key in state)
    fresh = make_runner(tmp_path / 'fresh', model=_block_net(with_cp=with_cp))
    fresh.load_checkpoint(str(tmp_path / 'compiled' / 'epoch_2.pth'), strict=True)
    x = torch.randn(5, 2)
    torch.testing.assert_close(fresh.model.eval()(x), compiled.model.eval()(x))


def test_regional_blocks_run_compiled_only_from_a_loss_call_to_the_end_of_its_step():
    net = _block_net()
    calls = []

    def compiled_call(block):
        return lambda *args, **kwargs: calls.append(block) or block._call_impl(*args, **kwargs)

    forward = LossForward(net.forward, net.forward, [(block, compiled_call(block)) for block in net.blocks])
    x, y = [torch.randn(2)] * 3, [torch.tensor(0.5)] * 3
    forward(x, y, mode='loss')['loss'].backward()
    assert calls == list(net.blocks)
    assert all(block._compiled_call_impl is not None for block in net.blocks)  # until the hook's after_train_iter
    forward(x, mode='predict')  # validation in the middle of training: eager
    assert len(calls) == 4 and all(block._compiled_call_impl is None for block in net.blocks)


def _symbolic_drop_path(x, drop_prob=0.0, training=False, scale_by_keep=True):
    """Stochastic depth on the float rate, written so that dynamo specialises it once and then makes it symbolic: one
    block class with several valid graphs, the case in which dynamo's LRU order breaks checkpointing (our DropPath
    reads a buffer under compile instead, so its blocks share one graph)."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    return x * ((torch.rand((x.shape[0], ) + (1, ) * (x.ndim - 1)) < keep).to(x.dtype) / keep)


class _BackboneLoss(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, inputs: torch.Tensor, mode: str = 'tensor'):
        out = self.backbone(inputs)
        return dict(loss=out.square().mean()) if mode == 'loss' else out


@pytest.mark.parametrize('lru', [False, True], ids=['hook', 'dynamo_lru_order'])
def test_regional_checkpointed_blocks_recompute_with_their_forward_graph(lru, monkeypatch):
    """AdaTAD's VideoMAE blocks, checkpointed, with rising drop-path rates read as Python floats: the blocks need 3
    graphs (first block: input without grad; second: rate specialised; then rate symbolic). Under dynamo's LRU order
    the recomputation of the second block picks the newer dynamic graph, which saves other tensors
    (pytorch/pytorch#166926); the hook's order does not."""
    from opentad_lora.models.layers import DropPath
    from opentad_lora.models.backbones.vit_adapter import VisionTransformerQLoRA
    monkeypatch.setattr(DropPath, 'forward', lambda self, x: _symbolic_drop_path(x, self.drop_prob, self.training))
    if lru:  # what the hook turns off
        monkeypatch.setattr(torch._C._dynamo.eval_frame, '_set_lru_cache', lambda on: None)
    torch._dynamo.reset()
    counters.clear()
    limit = torch._dynamo.config.recompile_limit
    model = _BackboneLoss(VisionTransformerQLoRA(
        img_size=16, patch_size=8, embed_dims=16, depth=4, num_heads=2, num_frames=4, total_frames=4,
        drop_path_rate=0.3, with_cp=True, quantize_bits=None, lora_r=2, lora_dropout=0.0)).train()
    runner = SimpleNamespace(model=model)
    hook = CompileHook(regional=True, backend='aot_eager')
    hook.before_train(runner)
    try:
        for step in range(2):
            loss = model(torch.randn(1, 3, 4, 16, 16), mode='loss')['loss']
            if lru:
                with pytest.raises(torch.utils.checkpoint.CheckpointError, match='different metadata'):
                    loss.backward()
                return
            loss.backward()
            hook.after_train_iter(runner, step)
    finally:
        hook.after_train(runner)
    assert counters['stats']['unique_graphs'] == 3
    assert torch._dynamo.config.recompile_limit == limit  # raised by 4 (the blocks) during training only


@pytest.mark.parametrize('wrapped', [True, False], ids=['main_thread_count', 'bare_compiled'])
def test_regional_block_called_from_another_thread_reuses_the_main_threads_graph(wrapped):
    """The backward recomputes checkpointed blocks on autograd's device thread, whose intra-op thread count can
    differ from the main thread's: dynamo guards on the count, so the bare compiled block compiles again there."""
    torch._dynamo.reset()
    counters.clear()
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    block, x = ToyBlock(4), torch.randn(3, 4)
    compiled = torch.compile(block._call_impl, backend='aot_eager')
    call = MainThreadCount(compiled) if wrapped else compiled
    try:
        torch.set_num_threads(1)
        expected = call(x)
        outputs = []

        def other_thread():
            torch.set_num_threads(2)
            outputs.append(call(x))

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(outputs[0], expected, rtol=0, atol=0)
    assert counters['stats']['unique_graphs'] == (1 if wrapped else 2)
