"""CAD-Recode through the real tools: data generator, tools/train.py (validation during training, --resume equal to
an uninterrupted run), tools/test.py, tools/merge_lora.py and tools/cad_infer.py on the Runner checkpoint."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFIG = str(REPO_ROOT / 'configs' / 'cad_recode' / 'cad_recode_tiny_lora_synthetic.py')


def load_tool(name):
    path = REPO_ROOT / 'tools' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(f'cad_tool_{name.replace("/", "_")}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp('cad_runner') / 'data'
    load_tool('data/make_synthetic_cad').main(['--out', str(out), '--train', '4', '--val', '2', '--kinds', 'box',
                                               'cylinder', '--surface-points', '512', '--vocab-size', '400'])
    # Validation runs with the 'arrays' mesher (no CadQuery): ground-truth programs that build a mesh themselves.
    for code in (out / 'val' / 'code').glob('*.py'):
        code.write_text('r = ([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], '
                        '[[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])\n')
    return out


def options(data, experiment):
    llm = str(data / 'tiny_qwen2')
    opts = {'model.llm.pretrained': llm, 'model.tokenizer': llm, 'model.max_new_tokens': 8,
            'train_dataloader.dataset.pipeline.1.prob': 0.0,  # no noise: numpy's RNG is not part of a checkpoint
            'train_dataloader.dataset.pipeline.3.tokenizer': llm, 'train_dataloader.batch_size': 4,
            'train_cfg.max_epochs': 2, 'train_cfg.val_interval': 2, 'default_hooks.checkpoint.interval': 1,
            'default_hooks.logger.interval': 1, 'experiment_name': experiment}
    for split in ('train', 'val', 'test'):
        opts[f'{split}_dataloader.dataset.data_root'] = str(data)
        opts[f'{split}_dataloader.dataset.pipeline.0.num_points'] = 32
    for split in ('val', 'test'):
        opts[f'{split}_evaluator.mesher'] = 'arrays'
    return ['--cfg-options', *(f'{k}={v}' for k, v in opts.items())]


def trainable(checkpoint):
    return torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']


def test_train_validate_resume_test_and_export(synthetic, tmp_path):
    train = load_tool('train')
    train.main([CONFIG, '--work-dir', str(tmp_path / 'a'), *options(synthetic, 'cad_a')])
    scalars = [json.loads(line) for line in next((tmp_path / 'a').glob('*/vis_data/scalars.json')).read_text()
               .splitlines()]
    validation = [s for s in scalars if 'cad/ir' in s]
    assert len(validation) == 1 and validation[0]['step'] == 2 and validation[0]['cad/num_samples'] == 2
    assert validation[0]['cad/ir'] == 100.0  # 8 tokens of an untrained model are no valid program
    final = trainable(tmp_path / 'a' / 'epoch_2.pth')
    assert set(final) == {k for k in final if '.lora_' in k or k.startswith('point_encoder.')}  # trimmed
    # As seed 002: the adapter folder keeps the tokenizer and names its base; merged_model/ is written too.
    assert {'adapter_model.safetensors', 'adapter_config.json', 'cad_recode.json', 'tokenizer.json',
            'tokenizer_config.json'} <= {p.name for p in (tmp_path / 'a' / 'final_lora_weights').iterdir()}
    assert {'config.json', 'model.safetensors', 'tokenizer.json', 'cad_recode.json'} <= \
        {p.name for p in (tmp_path / 'a' / 'merged_model').iterdir()}

    train.main([CONFIG, '--work-dir', str(tmp_path / 'b'), '--resume', str(tmp_path / 'a' / 'epoch_1.pth'),
                *options(synthetic, 'cad_b')])
    resumed = trainable(tmp_path / 'b' / 'epoch_2.pth')
    assert resumed.keys() == final.keys()
    for key in final:
        torch.testing.assert_close(resumed[key], final[key], atol=1e-6, rtol=0)

    metrics = load_tool('test').main([CONFIG, str(tmp_path / 'a' / 'epoch_2.pth'), '--work-dir',
                                      str(tmp_path / 't'), *options(synthetic, 'cad_t')])
    assert metrics['cad/num_samples'] == 2 and metrics['cad/ir'] == 100.0

    load_tool('merge_lora').main([CONFIG, str(tmp_path / 'a' / 'epoch_2.pth'), str(tmp_path / 'export'),
                                  *options(synthetic, 'cad_m')])
    assert (tmp_path / 'export' / 'adapter_model.safetensors').is_file()
    assert (tmp_path / 'export' / 'merged_model.pth').is_file()
    cad_infer = load_tool('cad_infer')
    config_file = tmp_path / 'config.py'  # the work dir's dumped config has the overrides applied
    config_file.write_text((tmp_path / 'a' / 'cad_recode_tiny_lora_synthetic.py').read_text())
    from_checkpoint, kind = cad_infer.load_cad_model(str(tmp_path / 'a' / 'epoch_2.pth'), str(config_file))
    from_adapter, adapter_kind = cad_infer.load_cad_model(str(tmp_path / 'export'), str(config_file))
    assert (kind, adapter_kind) == ('checkpoint', 'adapter')
    cad_infer.main([str(tmp_path / 'a' / 'epoch_2.pth'), '--config', str(config_file), '--export-merged',
                    str(tmp_path / 'exported')])
    merged, merged_kind = cad_infer.load_cad_model(str(tmp_path / 'a'))  # the work dir: merged_model/ wins
    exported, _ = cad_infer.load_cad_model(str(tmp_path / 'exported'))
    alone, alone_kind = cad_infer.load_cad_model(str(tmp_path / 'a' / 'final_lora_weights'))  # no --config
    assert (merged_kind, alone_kind) == ('merged', 'adapter')
    points = torch.rand(2, 32, 3) * 2 - 1
    expected = from_checkpoint.generate(points, 8)
    assert all(model.generate(points, 8) == expected for model in (from_adapter, merged, exported, alone))
