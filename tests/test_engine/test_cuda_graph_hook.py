"""CUDAGraphHook / GraphedForward: which calls replay the captured graphs, gradient accumulation, config set-up.

CUDA graphs need a GPU, so the dispatch is tested on CPU with a stand-in for ``make_graphed_callables`` that has the
one property of torch's replay the dispatch must handle: every backward hands out the gradients in the same
buffers. ``benchmarks/cuda_parity.py`` compares real captured training with eager training on a GPU.
"""
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from torch import nn

from opentad_lora.engine import CUDAGraphHook, GraphedForward, setup_compile, setup_cuda_graph
from opentad_lora.peft import apply_lora


class StandInCapture:
    """On CPU: forward and backward of the module as one opaque autograd node, whose backward writes the parameter
    gradients into buffers made at capture and returns those buffers (what a replay of the backward graph does)."""

    def __init__(self) -> None:
        self.captures = 0
        self.buffers = []

    def __call__(self, module: nn.Module, sample_args, num_warmup_iters: int) -> nn.Module:
        self.captures += 1
        trainable = tuple(param for param in module.parameters() if param.requires_grad)
        self.buffers = [torch.zeros_like(param) for param in trainable]
        buffers, class_forward = self.buffers, module.forward

        class Replay(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, *weights):
                with torch.enable_grad():
                    ctx.out = class_forward(x)
                return ctx.out.detach()

            @staticmethod
            def backward(ctx, grad):
                for buffer, value in zip(buffers, torch.autograd.grad(ctx.out, trainable, grad)):
                    buffer.copy_(value)
                return (None, *(buffer.detach() for buffer in buffers))

        module.forward = lambda x: Replay.apply(x, *trainable)
        return module


def lora_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    apply_lora(model, dict(r=2, alpha=4, targets=['0', '2']))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'lora_B' in name:
                param.normal_(0, 0.1)
    return model


def trainable_grads(model: nn.Module) -> list:
    return [param.grad.clone() for param in model.parameters() if param.requires_grad]


def accumulate_and_step(model: nn.Module, batches) -> tuple:
    """Backward of every batch into the same .grad (accumulation), then one SGD step; grads and the new weights."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for x in batches:
        model(x).square().mean().backward()
    grads = trainable_grads(model)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grads, [param.detach().clone() for param in model.parameters() if param.requires_grad]


def test_replays_accumulate_gradients_as_eager_does():
    torch.manual_seed(1)
    batches = [torch.randn(5, 8) for _ in range(3)]
    eager_model, graphed_model = lora_mlp(), lora_mlp()
    capture = StandInCapture()
    GraphedForward(graphed_model, 'mlp', capture=capture, device_type='cpu')

    graphed_model(batches[0]).sum().backward()  # the stand-in hands its buffers to .grad as they are ...
    held = {param.grad.data_ptr() for param in graphed_model.parameters() if param.grad is not None}
    assert held & {buffer.data_ptr() for buffer in capture.buffers}  # ... the case the dispatch must handle
    graphed_model.zero_grad(set_to_none=True)

    for _ in range(2):  # two optimizer steps, each over three micro-batches
        expected_grads, expected_weights = accumulate_and_step(eager_model, batches)
        grads, weights = accumulate_and_step(graphed_model, batches)
        for got, want in zip(grads + weights, expected_grads + expected_weights):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert capture.captures == 1


def test_other_calls_run_eagerly_and_restore_gives_the_forward_back(capsys):
    model = lora_mlp()
    keys = list(model.state_dict())
    capture = StandInCapture()
    graphed = GraphedForward(model, 'mlp', capture=capture, device_type='cpu')
    x = torch.randn(5, 8)
    model(x).sum().backward()
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
    model.train()
    smaller = model(x[:3])  # another shape: eager, logged once
    model(x[:2])
    assert capture.captures == 1
    assert capsys.readouterr().out.count('runs eagerly (its inputs differ from the captured call)') == 1
    assert smaller.grad_fn.name() != 'ReplayBackward'  # the eager graph, not the stand-in's node
    assert model(x).grad_fn.name() == 'ReplayBackward'
    graphed.restore()
    assert 'forward' not in model.__dict__ and list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), eval_out)  # same weights, the class forward again


def test_a_replaced_forward_is_refused():
    model = lora_mlp()
    GraphedForward(model, 'mlp', capture=StandInCapture(), device_type='cpu')
    with pytest.raises(ValueError, match='mlp: its forward is already replaced'):
        GraphedForward(model, 'mlp', capture=StandInCapture(), device_type='cpu')


def test_hook_names_a_missing_module_and_keeps_cpu_models_eager(capsys):
    model = nn.Sequential()
    model.add_module('backbone', lora_mlp())
    runner = SimpleNamespace(model=model)
    with pytest.raises(ValueError, match=r"no module 'neck' \(its children: \['backbone'\]\)"):
        CUDAGraphHook(modules=['neck']).before_train(runner)
    CUDAGraphHook().before_train(runner)
    assert 'forward' not in model.backbone.__dict__
    assert "on ['cpu']): training runs eagerly" in capsys.readouterr().out


@pytest.mark.parametrize('bad', ['backbone', [], ()])
def test_hook_refuses_modules_that_are_not_a_list_of_names(bad):
    with pytest.raises(ValueError, match='non-empty list of module names'):
        CUDAGraphHook(modules=bad)


def test_setup_turns_the_config_key_or_flag_into_the_hook():
    cfg = Config(dict(cuda_graph=dict(modules=['backbone.blocks'], warmup_iters=2), custom_hooks=[]))
    assert setup_cuda_graph(cfg) is True
    assert 'cuda_graph' not in cfg
    assert cfg.custom_hooks == [dict(type='opentad_lora.CUDAGraphHook', modules=['backbone.blocks'], warmup_iters=2)]
    cfg = Config(dict())
    assert setup_cuda_graph(cfg, flag=True) is True and cfg.custom_hooks[0].type == 'opentad_lora.CUDAGraphHook'
    assert setup_cuda_graph(Config(dict())) is False
    with pytest.raises(ValueError, match='non-empty list'):
        setup_cuda_graph(Config(dict(cuda_graph=dict(modules='backbone'))))


def test_setup_refuses_cuda_graph_with_compile():
    cfg = Config(dict(compile=True, cuda_graph=True))
    setup_compile(cfg)
    with pytest.raises(ValueError, match='cuda_graph and compile are both set'):
        setup_cuda_graph(cfg)
