"""HaMeRLoRA: LoRA placement, the official checkpoint layout, and one adversarial training step."""
import copy
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapperDict

import opentad_lora.models  # noqa: F401  (registers the model parts)
from opentad_lora.datasets.hamer import write_synthetic_mano
from opentad_lora.engine.optim_constructor import LoRAOptimWrapperConstructor
from opentad_lora.models.hamer import aa_to_rotmat, to_hamer_state_dict
from opentad_lora.peft import LoRAConv, LoRALinear, iter_lora_layers
from opentad_lora.registry import MODELS

CONFIG = Path(__file__).parents[3] / 'configs' / 'hamer' / 'hamer_tiny_lora_synthetic.py'
DIM, DEPTH, HEAD_DIM, HEAD_DEPTH, HEADS, DIM_HEAD, FC = 32, 2, 32, 1, 2, 16, 32
SEED_BACKBONE = ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')
SEED_DISCRIMINATOR = ('D_conv1', 'D_conv2', 'betas_fc1', 'betas_fc2', 'D_alljoints_fc1', 'D_alljoints_fc2')


@pytest.fixture(scope='module')
def mano_path(tmp_path_factory):
    return str(write_synthetic_mano(tmp_path_factory.mktemp('mano') / 'MANO_RIGHT.pkl'))


def tiny_cfg(mano_path: str, **overrides) -> Config:
    """The repository's tiny config, shrunk further for tests."""
    cfg = Config.fromfile(str(CONFIG))
    cfg.merge_from_dict(dict(model=dict(dict(
        pretrained_model_path=None, mano=dict(model_path=mano_path),
        backbone=dict(embed_dim=DIM, depth=DEPTH, num_heads=2),
        mano_head=dict(context_dim=DIM, dim=HEAD_DIM, depth=HEAD_DEPTH, heads=HEADS, dim_head=DIM_HEAD,
                       mlp_dim=HEAD_DIM),
        discriminator=dict(fc_dim=FC)), **overrides)))
    return cfg


def seed_module_names() -> set:
    """The seed's LoRA module list, spelled out for these depths."""
    names = {f'backbone.blocks.{i}.{t}' for i in range(DEPTH) for t in SEED_BACKBONE}
    for layer in range(HEAD_DEPTH):
        prefix = f'mano_head.transformer.transformer.layers.{layer}'
        names |= {f'{prefix}.0.fn.to_qkv', f'{prefix}.0.fn.to_out.0', f'{prefix}.1.fn.to_kv', f'{prefix}.1.fn.to_q',
                  f'{prefix}.1.fn.to_out.0'}
    names |= {f'mano_head.{n}' for n in ('decpose', 'decshape', 'deccam')}
    return names | {f'discriminator.{n}' for n in SEED_DISCRIMINATOR}


def test_lora_sits_on_exactly_the_seed_modules_and_nothing_else_trains(mano_path):
    cfg = tiny_cfg(mano_path, lora=dict(r=3, alpha=6.0, dropout=0.1))
    model = MODELS.build(cfg.model)
    layers = dict((f'{n}', layer) for n, layer in iter_lora_layers(model))
    assert set(layers) == seed_module_names()
    for name, layer in layers.items():
        expected = LoRAConv if name.split('.')[-1] in ('D_conv1', 'D_conv2') else LoRALinear
        assert type(layer) is expected, name
        assert (layer.r['default'], layer.lora_alpha['default'], layer.dropout_p['default']) == (3, 6.0, 0.1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f'{n}.lora_{ab}.default.weight' for n in layers for ab in 'AB'}


def test_part_without_lora_is_frozen_and_bad_target_names_candidates(mano_path):
    lora = dict(r=2, alpha=2.0, backbone=dict(targets=['attn.qkv']), mano_head=None, discriminator=None)
    model = MODELS.build(tiny_cfg(mano_path, lora=lora).model)
    assert {n.split('.', 1)[0] for n, p in model.named_parameters() if p.requires_grad} == {'backbone'}
    bad = dict(lora, mano_head=dict(targets=['to_out']))  # a Sequential, LoRA cannot wrap it
    with pytest.raises(ValueError, match='to_out'):
        MODELS.build(tiny_cfg(mano_path, lora=bad).model)


def upstream_hamer_shapes() -> 'OrderedDict[str, tuple]':
    """Keys and shapes of HaMeR's ``hamer.ckpt`` state dict at the test sizes (from HaMeR's module code)."""
    shapes = OrderedDict()
    b, hidden = 'backbone.', 4 * DIM
    shapes.update({b + 'patch_embed.proj.weight': (DIM, 3, 16, 16), b + 'patch_embed.proj.bias': (DIM,),
                   b + 'pos_embed': (1, 1 + 16 * 12, DIM)})
    for i in range(DEPTH):
        p = f'{b}blocks.{i}.'
        shapes.update({p + 'norm1.weight': (DIM,), p + 'norm1.bias': (DIM,), p + 'attn.qkv.weight': (3 * DIM, DIM),
                       p + 'attn.qkv.bias': (3 * DIM,), p + 'attn.proj.weight': (DIM, DIM),
                       p + 'attn.proj.bias': (DIM,), p + 'norm2.weight': (DIM,), p + 'norm2.bias': (DIM,),
                       p + 'mlp.fc1.weight': (hidden, DIM), p + 'mlp.fc1.bias': (hidden,),
                       p + 'mlp.fc2.weight': (DIM, hidden), p + 'mlp.fc2.bias': (DIM,)})
    shapes.update({b + 'last_norm.weight': (DIM,), b + 'last_norm.bias': (DIM,)})
    h, inner = 'mano_head.', HEADS * DIM_HEAD
    shapes.update({h + 'transformer.to_token_embedding.weight': (HEAD_DIM, 1),
                   h + 'transformer.to_token_embedding.bias': (HEAD_DIM,),
                   h + 'transformer.pos_embedding': (1, 1, HEAD_DIM)})
    for i in range(HEAD_DEPTH):
        p = f'{h}transformer.transformer.layers.{i}.'
        for k in range(3):
            shapes.update({f'{p}{k}.norm.weight': (HEAD_DIM,), f'{p}{k}.norm.bias': (HEAD_DIM,)})
        shapes.update({p + '0.fn.to_qkv.weight': (3 * inner, HEAD_DIM), p + '0.fn.to_out.0.weight': (HEAD_DIM, inner),
                       p + '0.fn.to_out.0.bias': (HEAD_DIM,), p + '1.fn.to_kv.weight': (2 * inner, DIM),
                       p + '1.fn.to_q.weight': (inner, HEAD_DIM), p + '1.fn.to_out.0.weight': (HEAD_DIM, inner),
                       p + '1.fn.to_out.0.bias': (HEAD_DIM,), p + '2.fn.net.0.weight': (HEAD_DIM, HEAD_DIM),
                       p + '2.fn.net.0.bias': (HEAD_DIM,), p + '2.fn.net.3.weight': (HEAD_DIM, HEAD_DIM),
                       p + '2.fn.net.3.bias': (HEAD_DIM,)})
    for name, out in (('decpose', 96), ('decshape', 10), ('deccam', 3)):
        shapes.update({f'{h}{name}.weight': (out, HEAD_DIM), f'{h}{name}.bias': (out,)})
    shapes.update({h + 'init_hand_pose': (1, 96), h + 'init_betas': (1, 10), h + 'init_cam': (1, 3)})
    d = 'discriminator.'
    for name, shape in (('D_conv1', (32, 9, 1, 1)), ('D_conv2', (32, 32, 1, 1)), ('betas_fc1', (10, 10)),
                        ('betas_fc2', (5, 10)), ('betas_out', (1, 5)), ('D_alljoints_fc1', (FC, 480)),
                        ('D_alljoints_fc2', (FC, FC)), ('D_alljoints_out', (1, FC))):
        shapes.update({f'{d}{name}.weight': shape, f'{d}{name}.bias': (shape[0],)})
    for j in range(15):
        shapes.update({f'{d}pose_out.{j}.weight': (1, 32), f'{d}pose_out.{j}.bias': (1,)})
    shapes.update({'mano.v_template': (778, 3), 'mano.shapedirs': (778, 3, 10), 'mano.faces_tensor': (1538, 3),
                   'mano.extra_joints_idxs': (5,), 'initialized': ()})
    return shapes


def write_official_checkpoint(path: Path, shapes: dict, monkeypatch) -> dict:
    """A Lightning-style ``hamer.ckpt`` with distinct random tensors and yacs hyper-parameters."""
    yacs = types.ModuleType('yacs.config')
    yacs.CfgNode = type('CfgNode', (dict,), {'__module__': 'yacs.config'})
    monkeypatch.setitem(sys.modules, 'yacs', types.ModuleType('yacs'))
    monkeypatch.setitem(sys.modules, 'yacs.config', yacs)
    state = {k: torch.randn(s) for k, s in shapes.items()}
    torch.save({'state_dict': state, 'hyper_parameters': {'cfg': yacs.CfgNode(MODEL={'IMAGE_SIZE': 256})}}, path)
    monkeypatch.delitem(sys.modules, 'yacs.config')  # loading must not import yacs
    return state


def test_official_checkpoint_layout_maps_every_key(mano_path, tmp_path, monkeypatch):
    shapes = upstream_hamer_shapes()
    upstream = write_official_checkpoint(tmp_path / 'hamer.ckpt', shapes, monkeypatch)
    plain = MODELS.build(tiny_cfg(mano_path, lora=None, pretrained_model_path=str(tmp_path / 'hamer.ckpt')).model)
    ours = plain.state_dict()
    renamed = {'backbone.last_norm.weight': 'backbone.norm.weight', 'backbone.last_norm.bias': 'backbone.norm.bias'}
    for key, value in upstream.items():
        if key.startswith('mano.') or key == 'initialized':
            continue
        if key == 'backbone.pos_embed':  # HaMeR's forward adds the class slot to every token
            torch.testing.assert_close(ours[key], value[:, 1:] + value[:, :1])
        else:
            torch.testing.assert_close(ours[renamed.get(key, key)], value, msg=key)
    # ...and every persistent tensor of our model came from the file (no model key is left unmapped).
    assert len(ours) == len([k for k in shapes if not (k.startswith('mano.') or k == 'initialized')])
    # Our exporter writes exactly this layout (plus smplx-named MANO buffers).
    exported = {k for k in to_hamer_state_dict(plain) if not k.startswith('mano.')}
    assert exported == {k for k in shapes if not k.startswith('mano.')}
    # LoRA goes on after loading: with B = 0 the LoRA model computes the loaded base exactly.
    lora_model = MODELS.build(tiny_cfg(mano_path, pretrained_model_path=str(tmp_path / 'hamer.ckpt')).model)
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(lora_model.eval()(images)['vertices'], plain.eval()(images)['vertices'])
    torch.save({'state_dict': dict(upstream, **{'renderer.weight': torch.ones(1)})}, tmp_path / 'odd.ckpt')
    with pytest.raises(ValueError, match='renderer.weight'):
        MODELS.build(tiny_cfg(mano_path, pretrained_model_path=str(tmp_path / 'odd.ckpt')).model)


def random_batch(batch: int = 2) -> dict:
    poses = aa_to_rotmat(0.3 * torch.randn(batch, 16, 3))
    keypoints_3d = torch.cat([0.05 * torch.randn(batch, 21, 3) + torch.tensor([0, 0, 0.6]),
                              torch.ones(batch, 21, 1)], -1)
    samples = dict(keypoints_2d=torch.cat([0.2 * torch.randn(batch, 21, 2), torch.ones(batch, 21, 1)], -1),
                   keypoints_3d=keypoints_3d, global_orient=poses[:, :1], hand_pose=poses[:, 1:],
                   betas=torch.randn(batch, 10), mocap_hand_pose=aa_to_rotmat(0.3 * torch.randn(batch, 15, 3)),
                   mocap_betas=torch.randn(batch, 10))
    samples.update({f'has_{k}': torch.ones(batch) for k in ('global_orient', 'hand_pose', 'betas')})
    return dict(inputs=torch.randint(0, 256, (batch, 3, 256, 256), dtype=torch.uint8), data_samples=samples)


def test_one_adversarial_step_updates_both_optimizers_lora_params_only(mano_path):
    cfg = tiny_cfg(mano_path)
    model = MODELS.build(cfg.model)
    optim_cfg = cfg.optim_wrapper.to_dict()
    optim_cfg.pop('constructor')
    wrappers = LoRAOptimWrapperConstructor(optim_cfg)(model)
    assert isinstance(wrappers, OptimWrapperDict)
    owned = {name: {id(p) for g in w.optimizer.param_groups for p in g['params']} for name, w in wrappers.items()}
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert owned['generator'] == {id(p) for n, p in lora.items() if not n.startswith('discriminator.')}
    assert owned['discriminator'] == {id(p) for n, p in lora.items() if n.startswith('discriminator.')}
    batch = random_batch()
    # Reference: the discriminator's own loss gradient at the pre-step weights (the outputs it scores are detached).
    reference = copy.deepcopy(model)
    data = reference.data_preprocessor(copy.deepcopy(batch), True)
    reference.discriminator_loss(reference.predict_hands(data['inputs']), data['data_samples']).backward()
    disc_grads = {n: p.grad.clone() for n, p in reference.named_parameters() if n.startswith('discriminator.')
                  and p.requires_grad}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log_vars = model.train_step(batch, wrappers)
    assert {'loss', 'loss_keypoints_3d', 'loss_keypoints_2d', 'loss_global_orient', 'loss_hand_pose', 'loss_betas',
            'loss_adv', 'loss_disc'} <= set(log_vars)
    after = model.state_dict()
    lr, wd = cfg.optim_wrapper.discriminator.optimizer.lr, cfg.optim_wrapper.discriminator.optimizer.weight_decay
    assert (lr, wd) == (cfg.optim_wrapper.generator.optimizer.lr, cfg.optim_wrapper.generator.optimizer.weight_decay)
    for key, value in before.items():
        if key not in lora:  # frozen weights and buffers stay exactly as they were
            torch.testing.assert_close(after[key], value, atol=0, rtol=0, msg=key)
        elif '.lora_A.' in key:  # B = 0 gives A no gradient: AdamW only decays it
            torch.testing.assert_close(after[key], value * (1 - lr * wd), msg=key)
        else:
            assert not torch.equal(after[key], value), key
    # AdamW's first step moves a weight by -lr * grad / (|grad| + eps): the discriminator stepped on the gradient
    # of its own loss only, not on what the generator's adversarial term left on it.
    for name, grad in disc_grads.items():
        significant = grad.abs() > 1e-5
        if '.lora_B.' in name:
            assert significant.any(), name
        step = (after[name] - before[name] * (1 - lr * wd)) / lr
        torch.testing.assert_close(step[significant], -grad[significant].sign(), atol=2e-3, rtol=0)
