"""``ActionFormerHead.loss`` as masked sums: the numbers of the boolean-indexed formula, and one graph under compile."""
import math
from typing import Dict, List, Sequence, Tuple

import pytest
import torch
from torch import Tensor
from torch._dynamo.testing import CompileCounterWithBackend

from opentad_lora.models.tad import ActionFormerHead, assign_points
from opentad_lora.models.tad.head import decode_segments

LENGTHS = (16, 8, 4)  # points of the three levels (strides 1, 2, 4)
Batch = Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]]


def make_head(**kwargs) -> ActionFormerHead:
    torch.manual_seed(0)
    return ActionFormerHead(num_classes=3, in_channels=4, feat_channels=4, num_convs=1, prior_generator=dict(
        type='PointGenerator', strides=[1, 2, 4], regression_range=[(0, 4), (4, 8), (8, 10000)]), **kwargs)


def reference_loss(head: ActionFormerHead, feats: Sequence[Tensor], masks: Sequence[Tensor],
                   gt_segments: Sequence[Tensor], gt_labels: Sequence[Tensor]) -> Dict[str, Tensor]:
    """The loss as it was computed before (boolean indexing, Python-int positives, ``.item()``): the reference."""
    logits, offsets = (torch.cat(outputs, 1) for outputs in head(feats, masks))
    points, valid = head.points(feats), torch.cat(masks, 1)
    cls_targets, reg_targets = head.targets(points, gt_segments, gt_labels)
    positive = (cls_targets.sum(-1) > 0) & valid
    num_pos = int(positive.sum())
    if head.training:
        momentum = head.loss_normalizer_momentum
        head.loss_normalizer.mul_(momentum).add_((1 - momentum) * max(num_pos, 1))
        normalizer = head.loss_normalizer.item()
    else:
        normalizer = max(num_pos, 1)
    cls_target = cls_targets[valid] * (1 - head.label_smoothing) + head.label_smoothing / (head.num_classes + 1)
    cls_loss = head.cls_loss(logits[valid], cls_target) / normalizer
    pred_segments = decode_segments(points, offsets)[positive]
    if num_pos > 0:
        reg_loss = head.reg_loss(pred_segments, decode_segments(points, reg_targets)[positive]) / normalizer
    else:
        reg_loss = pred_segments.sum() * 0.0
    weight = head.loss_weight if head.loss_weight > 0 else cls_loss.detach() / max(reg_loss.item(), 0.01)
    return dict(cls_loss=cls_loss, reg_loss=reg_loss * weight)


def make_batch(gts: Sequence[Sequence[Tuple[float, float, int]]], valid: Sequence[int]) -> Batch:
    """Pyramid of random features whose sample ``b`` is valid over ``valid[b]`` finest steps, and its actions."""
    feats = [torch.randn(len(gts), 4, length) for length in LENGTHS]
    masks = [torch.stack([torch.arange(length) < math.ceil(v * length / LENGTHS[0]) for v in valid])
             for length in LENGTHS]
    segments = [torch.tensor([g[:2] for g in sample], dtype=torch.float32).reshape(-1, 2) for sample in gts]
    labels = [torch.tensor([g[2] for g in sample], dtype=torch.long) for sample in gts]
    return feats, masks, segments, labels


def batches() -> List[Batch]:
    torch.manual_seed(1)
    return [
        make_batch([[], [(13.0, 15.0, 1)]], valid=(16, 12)),  # no positive: no action, one action in the padding
        make_batch([[(2.0, 6.0, 1), (1.0, 9.0, 0)], [(0.0, 15.0, 2)]], valid=(16, 16)),
        make_batch([[(3.0, 5.0, 0), (3.0, 5.0, 2), (8.0, 15.0, 1)], [(4.0, 14.0, 1)]], valid=(11, 9)),  # padded
        make_batch([[(5.0, 7.0, 2)], [(1.0, 3.0, 0), (6.0, 12.0, 1)]], valid=(16, 7)),
    ]


def num_positives(head: ActionFormerHead, batch: Batch) -> int:
    feats, masks, segments, labels = batch
    points = head.points(feats)
    positive = torch.stack([assign_points(points, s, l, head.num_classes)[0].sum(-1) > 0
                            for s, l in zip(segments, labels)])
    return int((positive & torch.cat(masks, 1)).sum())


def losses_and_grads(loss_fn, head: ActionFormerHead, batch: Batch) -> Tuple[List[Tensor], List[Tensor]]:
    feats = [x.clone().requires_grad_() for x in batch[0]]
    losses = loss_fn(head, feats, *batch[1:])
    values = [losses['cls_loss'], losses['reg_loss']]
    grads = [g for value in values for g in torch.autograd.grad(value, feats, retain_graph=True)]
    return [v.detach() for v in values], grads


@pytest.mark.parametrize('kwargs', [dict(), dict(label_smoothing=0.1), dict(loss_weight=-1.0),
                                    dict(loss_weight=0.0, label_smoothing=0.2, center_sample=None)])
@pytest.mark.parametrize('training', [True, False])
def test_masked_loss_equals_the_indexed_formula(kwargs, training):
    new, old = make_head(**kwargs).train(training), make_head(**kwargs).train(training)
    differences = []
    for batch in batches() * 2:
        new_values, new_grads = losses_and_grads(ActionFormerHead.loss, new, batch)
        old_values, old_grads = losses_and_grads(reference_loss, old, batch)
        for got, expected in zip(new_values + new_grads, old_values + old_grads):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
            differences.append((got - expected).abs().max().item())
        assert torch.equal(new.loss_normalizer, old.loss_normalizer)  # the running normaliser, bit for bit
    assert max(differences) < 1e-6
    assert (new.loss_normalizer.item() == 100.0) != training  # only training moves it


def test_positive_counts_of_the_batches_and_the_normaliser_update():
    head = make_head()
    counts, normaliser = [], 100.0
    for batch in batches():
        counts.append(num_positives(head, batch))
        head.loss(*batch)
        normaliser = 0.9 * normaliser + 0.1 * max(counts[-1], 1)
        assert head.loss_normalizer.item() == pytest.approx(normaliser, rel=1e-6)
    assert counts[0] == 0 and len(set(counts)) == 4  # the batches cover zero and varied numbers of positives


def test_loss_compiles_to_one_graph_reused_for_any_number_of_positives():
    torch._dynamo.reset()
    counter = CompileCounterWithBackend('aot_eager')
    head, reference = make_head(label_smoothing=0.1), make_head(label_smoothing=0.1)
    compiled = torch.compile(head.loss, backend=counter, fullgraph=True)
    torch.manual_seed(2)
    same_shapes = [make_batch([[(13.0, 15.0, 1)], [(12.0, 15.0, 0)]], valid=(12, 11)),  # all in the padding
                   make_batch([[(2.0, 6.0, 1)], [(0.0, 15.0, 2)]], valid=(16, 16)),
                   make_batch([[(5.0, 7.0, 2)], [(6.0, 12.0, 1)]], valid=(16, 7))]
    assert [num_positives(head, batch) for batch in same_shapes] == [0, 7, 1]
    for batch in same_shapes:
        got = compiled(*batch)
        expected = reference_loss(reference, *batch)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7)
        assert torch.equal(head.loss_normalizer, reference.loss_normalizer)
    assert counter.frame_count == 1  # compiled once, no graph break, no recompile
    torch._dynamo.reset()


def test_zero_length_padding_actions_change_nothing():
    # a fixed number of actions per sample (padded with zero-length ones) keeps the compiled graph's shapes fixed
    head = make_head()
    feats, masks, segments, labels = batches()[2]
    padded_segments = [torch.cat([s, torch.full((4 - len(s), 2), 3.0)]) for s in segments]
    padded_labels = [torch.cat([l, torch.zeros(4 - len(l), dtype=torch.long)]) for l in labels]
    expected = head.eval().loss(feats, masks, segments, labels)
    got = head.loss(feats, masks, padded_segments, padded_labels)
    assert all(torch.equal(got[key], expected[key]) for key in expected)
