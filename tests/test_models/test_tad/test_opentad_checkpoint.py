"""A detector checkpoint written the way OpenTAD saves AdaTAD's (``epoch_X.pth``) loads completely, EMA first, and
``tools/test.py CONFIG epoch_X.pth`` evaluates it."""
import importlib.util
import pickle
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from opentad_lora.models.tad.opentad_checkpoint import convert_opentad_checkpoint, is_opentad_checkpoint
from opentad_lora.registry import MODELS

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / 'configs' / 'quickstart' / 'adatad_qlora_synthetic_thumos.py'
WINDOW = 32
# A tiny AdaTAD detector on the quickstart's data pipeline: plain adapters (an OpenTAD file has no LoRA weights).
TINY_CONFIG = f'''
_base_ = ['{QUICKSTART}']
model = dict(
    backbone=dict(_delete_=True, type='VisionTransformerAdapter', img_size=32, patch_size=16, embed_dims=32,
                  depth=2, num_heads=2, num_frames=16, tubelet_size=2, drop_path_rate=0.0, with_cp=False,
                  total_frames={WINDOW}, adapter_index=[0, 1], pretrained=None),
    temporal_size={WINDOW},
    projection=dict(in_channels=32, out_channels=16, arch=(1, 1, 1), max_seq_len={WINDOW}, path_pdrop=0.1,
                    attn_cfg=dict(n_head=2, n_mha_win_size=-1)),
    neck=dict(in_channels=16, out_channels=16, num_levels=2),
    rpn_head=dict(num_classes=2, in_channels=16, feat_channels=16, num_convs=2,
                  prior_generator=dict(strides=[1, 2], regression_range=[(0, 8), (8, 10000)])))
custom_hooks = []
'''


def opentad_name(key: str) -> str:
    """Where OpenTAD's DDP-wrapped ActionFormer keeps our tensor ``key``: the ViT under its BackboneWrapper's
    recognizer, with mmaction's layer names; projection, neck and head under the same names."""
    if key.startswith('backbone.'):
        vit = key[len('backbone.'):]
        vit = vit.replace('patch_embed.proj.', 'patch_embed.projection.')
        vit = vit.replace('.mlp.fc1.', '.mlp.layers.0.0.').replace('.mlp.fc2.', '.mlp.layers.1.')
        key = 'backbone.model.backbone.' + vit
    return 'module.' + key


def opentad_checkpoint(state, ema_state, with_ema: bool = True):
    """``epoch_X.pth`` as OpenTAD's save_checkpoint writes it, plus the ViT tensors our backbone has no use for."""
    def layout(weights):
        out = {opentad_name(key): value.clone() for key, value in weights.items()}
        out['module.backbone.model.backbone.pos_embed'] = torch.zeros(1, 16, 32)  # the fixed sin-cos buffer
        out['module.backbone.model.backbone.fc_norm.weight'] = torch.ones(32)  # unused by the feature-map output
        out['module.backbone.model.backbone.fc_norm.bias'] = torch.zeros(32)
        return out

    checkpoint = dict(epoch=7, state_dict=layout(state), optimizer=dict(state={}, param_groups=[]),
                      scheduler=dict(last_epoch=7))
    if with_ema:
        checkpoint['state_dict_ema'] = layout(ema_state)
    return checkpoint


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('opentad_ckpt')
    config = root / 'tiny_adatad.py'
    config.write_text(TINY_CONFIG)
    cfg = Config.fromfile(str(config))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    state = model.state_dict()
    ema = {key: value + 0.01 * torch.randn_like(value) if value.is_floating_point() else value
           for key, value in state.items()}
    return root, config, model, state, ema


def test_ema_weights_load_completely_and_only_unused_vit_tensors_are_dropped(tiny):
    _, _, model, state, ema = tiny
    checkpoint = opentad_checkpoint(state, ema)
    assert is_opentad_checkpoint(checkpoint)
    result = convert_opentad_checkpoint(checkpoint, model.state_dict())
    assert result.source == 'state_dict_ema'
    assert sorted(result.dropped) == ['backbone.model.backbone.fc_norm.bias', 'backbone.model.backbone.fc_norm.weight',
                                      'backbone.model.backbone.pos_embed']
    model.load_state_dict(result.state_dict, strict=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ema[key], msg=key)
    assert {'projection.stem.0.attn.query_conv.conv.weight', 'rpn_head.scale.1.scale',
            'backbone.blocks.1.adapter.dwconv.weight', 'backbone.blocks.0.mlp.fc1.weight'} <= set(result.state_dict)
    plain = convert_opentad_checkpoint(opentad_checkpoint(state, ema, with_ema=False), model.state_dict())
    assert plain.source == 'state_dict' and torch.equal(plain.state_dict['rpn_head.cls_head.weight'],
                                                        state['rpn_head.cls_head.weight'])
    assert not is_opentad_checkpoint(dict(state_dict=state, meta={}))  # our own layout passes through


def test_a_file_that_does_not_fill_the_model_is_refused_by_name(tiny):
    _, _, model, state, ema = tiny
    checkpoint = opentad_checkpoint(state, ema)
    del checkpoint['state_dict_ema']['module.rpn_head.scale.1.scale']
    with pytest.raises(ValueError, match=r'missing from the file \[\'rpn_head\.scale\.1\.scale\'\]'):
        convert_opentad_checkpoint(checkpoint, model.state_dict(), name='epoch_7.pth')
    checkpoint = opentad_checkpoint(state, ema)
    checkpoint['state_dict_ema']['module.rpn_head.cls_head.weight'] = torch.zeros(3, 16, 3)  # 3 classes, not 2
    with pytest.raises(ValueError, match=r'rpn_head\.cls_head\.weight: file \(3, 16, 3\) vs model \(2, 16, 3\)'):
        convert_opentad_checkpoint(checkpoint, model.state_dict())


def load_tool(relative: str):
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tools_test_evaluates_an_opentad_checkpoint_with_its_ema_weights(tiny):
    root, config, _, state, ema = tiny
    data = root / 'data'
    load_tool('tools/data/make_synthetic_thumos.py').main([
        '--out', str(data), '--num-classes', '2', '--num-train', '1', '--num-val', '1', '--min-frames', '40',
        '--max-frames', '48', '--min-action', '8', '--max-action', '16', '--max-actions', '2', '--width', '40',
        '--height', '32', '--config', str(config), '--seed', '3'])
    # non-EMA weights that would give NaN scores: equal predictions below show the EMA weights were used
    opentad_file, ours_file = root / 'epoch_7.pth', root / 'ours.pth'
    torch.save(opentad_checkpoint({k: torch.full_like(v, float('nan')) if v.is_floating_point() else v
                                   for k, v in state.items()}, ema), opentad_file)
    torch.save(dict(state_dict=ema, meta={}), ours_file)
    ann = data / 'annotations' / 'thumos_14_anno.json'
    options = [f'{loader}.dataset.{key}={value}' for loader in ('test_dataloader', 'val_dataloader')
               for key, value in (('ann_file', ann), ('class_map', data / 'annotations' / 'category_idx.txt'),
                                  ('data_path', data / 'raw_data' / 'video'), ('window_size', WINDOW))]
    options += [f'test_evaluator.ann_file={ann}', 'test_dataloader.num_workers=0', 'val_dataloader.num_workers=0']
    test = load_tool('tools/test.py')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictions, metrics = [], []
        for name, checkpoint in (('opentad', opentad_file), ('ours', ours_file)):
            out = root / f'{name}.pkl'
            metrics.append(test.main([str(config), str(checkpoint), '--work-dir', str(root / name), '--out', str(out),
                                      '--out-item', 'pred', '--cfg-options', *options]))
            predictions.append(pickle.loads(out.read_bytes()))
    finally:
        torch.set_num_threads(threads)
    assert metrics[0] == metrics[1] and 'tad/average_mAP' in metrics[0]
    (opentad, ours) = predictions
    assert len(opentad) == len(ours) > 0
    for a, b in zip(opentad, ours):
        assert a['pred_scores'].numel() > 0 and torch.isfinite(a['pred_scores']).all()
        torch.testing.assert_close(a['pred_segments'], b['pred_segments'])
        torch.testing.assert_close(a['pred_scores'], b['pred_scores'])


def test_converter_writes_a_checkpoint_that_loads_strictly(tiny, capsys):
    root, config, model, state, ema = tiny
    src, dst = root / 'convert_me.pth', root / 'converted.pth'
    torch.save(opentad_checkpoint(state, ema), src)
    convert = load_tool('tools/model_converters/opentad_to_opentad_lora.py').main
    assert convert([str(config), str(src), str(dst)]) == 0
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['opentad_weights'] == 'state_dict_ema'
    model.load_state_dict(converted['state_dict'], strict=True)
    torch.testing.assert_close(model.state_dict()['projection.branch.0.attn.key.weight'],
                               ema['projection.branch.0.attn.key.weight'])
    torch.save(dict(state_dict=state, meta={}), src)  # our own layout is not an OpenTAD file
    assert convert([str(config), str(src), str(dst)]) == 2
    assert 'is not an OpenTAD detector checkpoint' in capsys.readouterr().err
