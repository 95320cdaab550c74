"""common/prior_preservation.py: DreamBooth's loss, computed by hand on a tiny batch."""

import pytest
import torch

from common.prior_preservation import prior_preservation_loss


def test_prior_preservation_loss_by_hand():
    prediction = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([[0.0, 2.0], [3.0, 2.0], [1.0, 1.0], [1.0, 3.0]])
    total, instance, prior = prior_preservation_loss(prediction, target, num_instance=2, prior_weight=0.5)
    assert instance.item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    assert prior.item() == pytest.approx((1 + 1 + 0 + 4) / 4)
    assert total.item() == pytest.approx(1.25 + 0.5 * 1.5)
    alone, alone_instance, none = prior_preservation_loss(prediction[:2], target[:2], num_instance=2)
    assert none is None and alone.item() == alone_instance.item() == pytest.approx(1.25)
