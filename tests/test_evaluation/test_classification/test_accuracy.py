"""Top-k accuracy: hand-computed cases through the pure function and the registered metric."""
import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.structures import BaseDataElement

from opentad_lora.evaluation.classification import ClsAccuracy, topk_accuracy

SCORES = torch.tensor([[0.1, 0.7, 0.2],    # label 1: top-1 hit
                       [0.5, 0.3, 0.2],    # label 1: top-2 hit
                       [0.2, 0.3, 0.5],    # label 0: top-3 hit only
                       [0.6, 0.1, 0.3]])   # label 0: top-1 hit
LABELS = torch.tensor([1, 1, 0, 0])


def test_topk_accuracy_hand_computed():
    assert topk_accuracy(SCORES, LABELS, (1, 2, 3, 5)) == {1: 50.0, 2: 75.0, 3: 100.0, 5: 100.0}


def test_topk_accuracy_rejects_bad_shapes():
    with pytest.raises(ValueError, match='Expected scores'):
        topk_accuracy(SCORES, LABELS[:3])
    with pytest.raises(ValueError, match='empty'):
        topk_accuracy(SCORES[:0], LABELS[:0])


def test_cls_accuracy_through_the_evaluator_with_prefix():
    evaluator = Evaluator(ClsAccuracy(topk=(1, 2)))
    for start in (0, 2):  # two batches
        samples = [BaseDataElement(pred_score=s, gt_label=l) for s, l in zip(SCORES[start:start + 2],
                                                                            LABELS[start:start + 2])]
        evaluator.process(samples)
    assert evaluator.evaluate(4) == {'accuracy/top1': 50.0, 'accuracy/top2': 75.0}


def test_cls_accuracy_is_registered_and_validates_topk():
    from opentad_lora.registry import METRICS
    assert METRICS.get('ClsAccuracy') is ClsAccuracy
    with pytest.raises(ValueError, match='topk'):
        ClsAccuracy(topk=0)
