"""CAD-Recode's released checkpoints: v1 (point encoder over xyz + normals, 54 inputs; random points sorted by z) and
v1.5 (xyz, 51 inputs; furthest point sampling) both load, in the checkpoint's dtype, with the matching point
preprocessing chosen from the checkpoint. The releases are tiny stand-ins written in the released file layout:
``config.json`` of a ``CADRecode`` Qwen2 in bfloat16, one ``model.safetensors`` with the LLM's keys (bfloat16) and
``point_encoder.projection.*`` (float32), no tokenizer files (upstream loads Qwen2-1.5B's)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from opentad_lora.datasets.cad import CADCodeTokenizer, LoadCADPointCloud, write_points
from opentad_lora.models.cad import CADRecodeLoRA

REPO_ROOT = Path(__file__).resolve().parents[3]
HIDDEN, FREQS = 32, 8


def release_config(vocab_size):
    """config.json as CAD-Recode's releases write it (transformers 4.47 field names)."""
    return {'architectures': ['CADRecode'], 'model_type': 'qwen2', 'torch_dtype': 'bfloat16',
            'hidden_size': HIDDEN, 'intermediate_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 2,
            'num_key_value_heads': 1, 'vocab_size': vocab_size, 'max_position_embeddings': 512,
            'rms_norm_eps': 1e-6, 'rope_theta': 1000000.0, 'tie_word_embeddings': True, 'hidden_act': 'silu',
            'initializer_range': 0.3, 'use_cache': True, 'transformers_version': '4.47.1'}


def write_release(folder, normals, vocab_size, seed):
    """A seeded tiny release; returns its stored point encoder ``(weight, bias)``."""
    import transformers

    config = release_config(vocab_size)
    torch.manual_seed(seed)
    llm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**config))
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in llm.state_dict().items() if k != 'lm_head.weight'}
    weight = torch.randn(HIDDEN, 3 + 6 * FREQS + 3 * normals) * 0.3
    bias = torch.randn(HIDDEN) * 0.3
    state.update({'point_encoder.projection.weight': weight, 'point_encoder.projection.bias': bias})
    folder.mkdir(parents=True)
    save_file(state, str(folder / 'model.safetensors'), metadata={'format': 'pt'})
    (folder / 'config.json').write_text(json.dumps(config, indent=2))
    return weight, bias


def reference_features(points):
    """CAD-Recode's point features, written out: xyz, then sin of xyz * 2^k for each axis and k = 0..7 (axis-major),
    then the cosines, then the normals when the points have them."""
    xyz = points[..., :3].double()
    scaled = torch.cat([xyz[..., axis:axis + 1] * 2.0 ** torch.arange(FREQS) for axis in range(3)], dim=-1)
    return torch.cat([xyz, scaled.sin(), scaled.cos(), points[..., 3:].double()], dim=-1)


def reference_logits(folder, points, ids, weight, bias):
    """Logits at the token positions, computed with plain transformers on the release folder: the point
    embeddings (float32 projection, cast to bfloat16) followed by the token embeddings."""
    import transformers

    llm = transformers.Qwen2ForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).eval()
    point_embeds = (reference_features(points) @ weight.double().T + bias.double()).float().to(torch.bfloat16)
    embeds = torch.cat([point_embeds, llm.get_input_embeddings()(ids)], dim=1)
    with torch.no_grad():
        return llm(inputs_embeds=embeds).logits[:, points.shape[1]:]


def unit_normals(generator, shape):
    normals = torch.randn(*shape, 3, generator=generator)
    return normals / normals.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize('version', ['v1', 'v1.5'])
def test_released_checkpoint_loads_with_its_dtype_and_point_recipe(cad_data, tmp_path, version):
    normals = version == 'v1'
    tokenizer = str(cad_data / 'tokenizer')
    vocab = len(CADCodeTokenizer(cad_data / 'tokenizer'))
    weight, bias = write_release(tmp_path / version, normals, vocab, seed=5)
    model = CADRecodeLoRA(llm=dict(pretrained=str(tmp_path / version)), tokenizer=tokenizer).eval()
    assert model.point_recipe == version and model.point_encoder.normals is normals
    assert model.point_encoder.projection.in_features == (54 if normals else 51)
    assert model.llm_dtype == torch.bfloat16  # the checkpoint's dtype, not float32
    assert model.point_encoder.projection.weight.dtype == torch.float32
    torch.testing.assert_close(model.point_encoder.projection.weight.detach(), weight, atol=0, rtol=0)

    generator = torch.Generator().manual_seed(0)
    points = torch.rand(2, 16, 3, generator=generator) * 2 - 1
    if normals:
        points = torch.cat([points, unit_normals(generator, (2, 16))], dim=-1)
    features = model.point_encoder(points).double()
    torch.testing.assert_close(features, reference_features(points) @ weight.double().T + bias.double(),
                               atol=1e-5, rtol=1e-5)
    ids = torch.tensor([[model.tokenizer.start_id, 40, 41, 42], [model.tokenizer.start_id, 50, 51, 52]])
    with torch.no_grad():
        ours = model.text_logits(points, ids, torch.ones_like(ids))
    expected = reference_logits(tmp_path / version, points, ids, weight, bias)
    assert ours.dtype == torch.bfloat16 and expected.abs().max() > 1.0
    torch.testing.assert_close(ours.float(), expected.float(), atol=0.05, rtol=0)  # 1-2 bf16 steps at |logit| 5

    with pytest.raises(ValueError, match=f"recipe={version!r}"):  # the other release's points
        model.point_encoder(points[..., :3] if normals else torch.cat([points, points], dim=-1))
    with pytest.raises(ValueError, match='trained with'):
        CADRecodeLoRA(llm=dict(pretrained=str(tmp_path / version)), tokenizer=tokenizer, point_normals=not normals)
    as_float = CADRecodeLoRA(llm=dict(pretrained=str(tmp_path / version), dtype='float32'), tokenizer=tokenizer)
    assert as_float.llm_dtype == torch.float32  # an explicit dtype still wins


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f'cad_release_{name}', REPO_ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cad_infer_prepares_v1_points_with_normals_random_and_sorted_by_z(cad_data, tmp_path, capsys):
    vocab = len(CADCodeTokenizer(cad_data / 'tokenizer'))
    write_release(tmp_path / 'v1', normals=True, vocab_size=vocab, seed=6)
    rng = np.random.default_rng(0)
    xyz = rng.uniform([-3, 0, 5], [1, 2, 9], size=(300, 3))
    normal = rng.normal(size=(300, 3))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    cloud = write_points(tmp_path / 'cloud.ply', np.concatenate([xyz, normal], 1))
    bare = write_points(tmp_path / 'bare.npy', xyz)
    cad_infer = load_tool('cad_infer')
    with pytest.raises(SystemExit, match='tokenizer'):  # releases ship no tokenizer: --base names one
        cad_infer.load_cad_model(str(tmp_path / 'v1'))

    points = cad_infer.load_points([str(cloud)], 'v1', 32, seed=3)[0].double().numpy()
    assert points.shape == (32, 6)
    # Each prepared point is one of the file's points fitted to [-1, 1] (centre 0, largest extent 2), with its
    # own normal; 32 different points; ordered by z, then y, then x.
    centre = (xyz.min(0) + xyz.max(0)) / 2
    fitted = (xyz - centre) * (2 / (xyz.max(0) - xyz.min(0)).max())
    rows = [int(np.argmin(np.abs(fitted - p[:3]).sum(1))) for p in points]
    np.testing.assert_allclose(points[:, :3], fitted[rows], atol=1e-6)
    np.testing.assert_allclose(points[:, 3:], normal[rows], atol=1e-6)
    assert len(set(rows)) == 32
    keys = [tuple(p[[2, 1, 0]]) for p in points]
    assert keys == sorted(keys)
    np.testing.assert_array_equal(cad_infer.load_points([str(cloud)], 'v1', 32, seed=3)[0].double().numpy(), points)
    assert not np.array_equal(cad_infer.load_points([str(cloud)], 'v1', 32, seed=4)[0].double().numpy(), points)

    codes = cad_infer.main([str(tmp_path / 'v1'), '--base', str(cad_data / 'tokenizer'), '--points', str(cloud),
                            '--num-points', '32', '--max-new-tokens', '4', '--seed', '3'])
    printed = capsys.readouterr().out
    assert 'CAD-Recode v1 ' in printed and 'LLM in bfloat16' in printed  # the release's recipe and dtype
    model = CADRecodeLoRA(llm=dict(pretrained=str(tmp_path / 'v1')), tokenizer=str(cad_data / 'tokenizer'))
    assert codes == model.generate(torch.from_numpy(points).float()[None], 4)
    with pytest.raises(ValueError, match='normals'):  # a v1 model needs normals in the file
        cad_infer.main([str(tmp_path / 'v1'), '--base', str(cad_data / 'tokenizer'), '--points', str(bare)])


def test_v15_recipe_is_furthest_point_sampling_of_xyz(tmp_path):
    line = np.stack([np.arange(11.0), np.zeros(11), np.zeros(11)], 1)
    path = write_points(tmp_path / 'line.npy', np.concatenate([line, np.tile([[0.0, 0, 1]], (11, 1))], 1))
    points = LoadCADPointCloud(num_points=3, recipe='v1.5')(dict(points_path=str(path)))['points']
    np.testing.assert_allclose(points, [[-1, 0, 0], [1, 0, 0], [0, 0, 0]])  # first, furthest, middle; no normals
    with pytest.raises(ValueError, match='v2'):
        LoadCADPointCloud(recipe='v2')
