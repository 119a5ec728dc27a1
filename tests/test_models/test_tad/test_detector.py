"""TADDetector end to end on the real (tiny) AdaTAD backbone: what trains, coordinates, modes, preprocessing."""
import pytest
import torch
from mmengine.structures import BaseDataElement
from torch._dynamo.testing import CompileCounterWithBackend

from opentad_lora.engine.compile_hook import LossForward
from opentad_lora.models.tad import TADDataPreprocessor, TADDetector, assign_points

WINDOW = 32  # frames; the backbone halves time, so 16 grid steps of 2 snippets
BACKBONE = dict(type='VisionTransformerAdapter', img_size=32, patch_size=16, embed_dims=32, depth=2, num_heads=2,
                num_frames=16, tubelet_size=2, drop_path_rate=0.0, with_cp=False, total_frames=WINDOW)

PROJECTION = dict(type='Conv1DTransformerProj', in_channels=32, out_channels=16, arch=(1, 1, 1),
                  attn_cfg=dict(n_head=2, n_mha_win_size=5), max_seq_len=16)


def make_detector(projection=None, test_cfg=None, **backbone) -> TADDetector:
    return TADDetector(
        backbone=dict(BACKBONE, **backbone),
        projection=dict(PROJECTION, **(projection or {})),
        neck=dict(type='FPNIdentity', in_channels=16, out_channels=16, num_levels=2),
        rpn_head=dict(type='ActionFormerHead', num_classes=2, in_channels=16, feat_channels=16,
                      prior_generator=dict(type='PointGenerator', strides=[1, 2],
                                           regression_range=[(0, 4), (4, 10000)])),
        test_cfg=test_cfg)


def make_sample(gt=((6.0, 20.0), ), labels=(1, ), valid_len=WINDOW, duration=30.0) -> BaseDataElement:
    sample = BaseDataElement(metainfo=dict(video_name='v', window_start_frame=100, sample_stride=1, fps=10.0,
                                           duration=duration, valid_len=valid_len, window_size=WINDOW))
    sample.gt_segments = torch.tensor(gt).reshape(-1, 2)
    sample.gt_labels = torch.tensor(labels)
    return sample


def test_qlora_detector_trains_only_adapters_lora_and_the_detector():
    model = make_detector(type='VisionTransformerQLoRA', lora_r=4, lora_alpha=8, lora_dropout=0.0, quantize_bits=4)
    model.train()
    losses = model(torch.randn(2, 3, WINDOW, 32, 32), [make_sample(), make_sample(valid_len=20)], mode='loss')
    assert set(losses) == {'cls_loss', 'reg_loss'} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    backbone = {name for name in trainable if name.startswith('backbone.')}
    assert backbone and all('.adapter.' in name or '.lora_' in name for name in backbone)
    assert {'rpn_head.cls_head.weight', 'projection.embed.0.conv.weight'} <= trainable
    assert all(p.grad is None for name, p in model.named_parameters() if name not in trainable)
    lora_b = [p for name, p in model.named_parameters() if 'lora_B' in name]
    assert lora_b and all(p.grad is not None for p in lora_b)


def test_head_that_outputs_its_targets_decodes_to_the_ground_truth_in_seconds(monkeypatch):
    """Loss and predict use the same coordinates: perfect head outputs give back the annotated seconds."""
    model = make_detector().eval()
    sample = make_sample(gt=((6.0, 20.0), ), labels=(1, ))
    points = torch.cat(model.rpn_head.prior_generator([16, 8]))
    grid_gt = sample.gt_segments / (WINDOW / 16)  # grid step t is snippet 2t
    cls, reg = assign_points(points, grid_gt, sample.gt_labels, num_classes=2)
    assert cls.sum() > 0

    def perfect_head(feats, masks):
        logits = torch.where(cls > 0, 10.0, -10.0)[None]
        return list(logits.split([16, 8], dim=1)), list(reg[None].split([16, 8], dim=1))

    monkeypatch.setattr(model.rpn_head, 'forward', perfect_head)
    (pred, ) = model(torch.randn(1, 3, WINDOW, 32, 32), [sample], mode='predict')
    best = pred.pred_scores > 0.5
    assert best.sum() == cls.sum() and set(pred.pred_labels[best].tolist()) == {1}
    expected = torch.tensor([(100 + 6) / 10.0, (100 + 20) / 10.0])  # (window start + snippet) / fps
    torch.testing.assert_close(pred.pred_segments[best], expected.expand(int(best.sum()), 2))


def test_predictions_come_from_valid_steps_and_are_clipped_to_the_video():
    model = make_detector(test_cfg=dict(pre_nms_thresh=0.0)).eval()
    (pred, ) = model(torch.randn(1, 3, WINDOW, 32, 32), [make_sample(valid_len=12, duration=10.5)], mode='predict')
    assert pred.pred_scores.numel() == 2 * (6 + 3)  # classes x valid steps (snippets 0..11: 6 + 3 grid steps)
    assert pred.pred_segments.min() >= 0.0 and pred.pred_segments.max() <= 10.5
    assert pred.video_name == 'v' and pred.pred_labels.dtype == torch.long


def test_short_features_are_padded_to_max_seq_len_and_config_is_checked():
    model = make_detector().eval()
    model.projection.max_seq_len = 24  # the 16 backbone steps are zero-padded to 24 (masked)
    logits, _ = model(torch.randn(1, 3, WINDOW, 32, 32), mode='tensor')
    assert [x.shape[1] for x in logits] == [24, 12]
    with pytest.raises(ValueError, match='max_seq_len=20 must be divisible'):
        make_detector(projection=dict(max_seq_len=20))  # level 1: stride 2 x window 4 = 8 does not divide 20
    with pytest.raises(ValueError, match='duration_thresh'):
        make_detector(test_cfg=dict(duration_thresh=0.05))


def test_tensor_mode_and_unknown_mode():
    model = make_detector().eval()
    logits, offsets = model(torch.randn(1, 3, WINDOW, 32, 32), mode='tensor')
    assert [x.shape for x in logits] == [(1, 16, 2), (1, 8, 2)] and offsets[1].shape == (1, 8, 2)
    with pytest.raises(ValueError, match='unknown mode'):
        model(torch.randn(1, 3, WINDOW, 32, 32), mode='bogus')


def test_data_preprocessor_stacks_and_normalises():
    pre = TADDataPreprocessor(mean=(10, 20, 30), std=(2, 4, 5))
    clips = [torch.full((3, 4, 2, 2), 50, dtype=torch.uint8), torch.zeros(3, 4, 2, 2, dtype=torch.uint8)]
    out = pre(dict(inputs=clips, data_samples=[None, None]))
    assert out['inputs'].shape == (2, 3, 4, 2, 2)
    torch.testing.assert_close(out['inputs'][0, :, 0, 0, 0], torch.tensor([20.0, 7.5, 4.0]))
    torch.testing.assert_close(out['inputs'][1, :, 0, 0, 0], torch.tensor([-5.0, -5.0, -6.0]))
    with pytest.raises(ValueError, match=r'\(B, 3, T, H, W\)'):
        pre(dict(inputs=torch.zeros(1, 4, 3, 2, 2)))


def _batch(counts, valid_lens, seed):
    """Clips and samples with ``counts[b]`` random actions and ``valid_lens[b]`` real snippets."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for count, valid_len in zip(counts, valid_lens):
        starts = torch.rand(count, generator=generator) * 20
        gt = torch.stack([starts, starts + 2 + 8 * torch.rand(count, generator=generator)], 1)
        samples.append(make_sample(gt=gt.tolist(), labels=torch.randint(0, 2, (count, ), generator=generator).tolist(),
                                   valid_len=valid_len))
    return torch.randn(len(counts), 3, WINDOW, 32, 32, generator=generator), samples


def _seeded_qlora_detector() -> TADDetector:
    torch.manual_seed(0)
    return make_detector(type='VisionTransformerQLoRA', lora_r=4, lora_alpha=8, lora_dropout=0.1,
                         quantize_bits=4, depth=1, with_cp=True).train()


def test_compiled_loss_forward_compiles_once_whatever_the_number_of_actions_and_valid_lengths():
    """Compiled as CompileHook does: two graphs (before and after the eager target assignment), no recompile for
    new action counts (0, 1 and more per sample) or valid lengths, and eager's losses and gradients, for QLoRA-4
    with LoRA dropout and checkpointed blocks as in the seed's AdaTAD config (the compiled dropout draws from torch's
    generator as eager's does). Backend ``aot_eager``: with dynamo's ``eager`` backend the checkpointed blocks'
    recomputation draws new dropout masks (AOTAutograd saves and restores the generator for it, as inductor does)."""
    eager, compiled = _seeded_qlora_detector(), _seeded_qlora_detector()
    torch._dynamo.reset()
    counter = CompileCounterWithBackend('aot_eager')
    compiled.forward = LossForward(compiled.forward, torch.compile(compiled.forward, backend=counter))
    trained, graphs = [name for name, p in compiled.named_parameters() if p.requires_grad], []
    batches = [((1, 2), (32, 32)), ((2, 1), (20, 32)), ((0, 3), (32, 27)), ((4, 0), (27, 20)), ((1, 1), (32, 32))]
    for step, (counts, valid_lens) in enumerate(batches):
        inputs, samples = _batch(counts, valid_lens, step)
        losses = []
        for model in (eager, compiled):
            torch.manual_seed(step)  # the same dropout masks
            loss = model(inputs, samples, mode='loss')
            params = dict(model.named_parameters())
            losses.append(([loss['cls_loss'], loss['reg_loss']],
                           torch.autograd.grad(sum(loss.values()), [params[name] for name in trained])))
        (want, want_grads), (got, got_grads) = losses
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
        torch.testing.assert_close(got_grads, want_grads, rtol=1e-5, atol=1e-7)
        graphs.append(counter.frame_count)
    assert graphs == [2] * len(batches)  # compiled graphs after each batch: none after the first
    assert torch.equal(compiled.rpn_head.loss_normalizer, eager.rpn_head.loss_normalizer)
    torch._dynamo.reset()
