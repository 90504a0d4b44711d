import math

import pytest
import torch

from segblocks.evaluation.metrics import ConfusionMatrix


def test_confusion_matrix_and_iou_by_hand():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 1, 0]]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # rows = true class, cols = predicted; the 255 pixel is ignored
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    r = cm.compute()
    # class 0: tp 1, fp 0, fn 1 -> 1/2 ; class 1: tp 2, fp 2, fn 0 -> 2/4 ; class 2: 0/1
    assert r["iou"] == pytest.approx([0.5, 0.5, 0.0])
    assert r["miou"] == pytest.approx(1 / 3)
    assert r["pixel_accuracy"] == pytest.approx(3 / 5)


def test_logits_accumulate_and_absent_classes_are_nan():
    cm = ConfusionMatrix(4)
    logits = torch.zeros(1, 4, 1, 2)
    logits[0, 1, 0, 0] = 1
    logits[0, 0, 0, 1] = 1
    cm.update(logits, torch.tensor([[[1, 0]]]))
    cm.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 1]]]))
    iou = cm.iou()
    assert iou[:2].tolist() == [1.0, 1.0] and math.isnan(iou[2]) and math.isnan(iou[3])
    assert cm.compute()["miou"] == 1.0
    cm.reset()
    assert cm.matrix.sum() == 0
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(1, 2, 2), torch.zeros(1, 3, 3))


def test_labels_outside_the_classes_raise_but_ignore_is_skipped():
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 255], [1, 2]]]))
    assert int(cm.matrix.sum()) == 3
    with pytest.raises(ValueError, match="label 7 is outside the 3 classes"):
        cm.update(torch.zeros(1, 1, 2, dtype=torch.long), torch.tensor([[[7, 1]]]))
