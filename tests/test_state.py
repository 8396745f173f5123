"""`Batch`, the state of one step: a namespace with SimpleNamespace's behaviour."""

import pytest
import torch

import fluxpy as fp
from fluxpy.core.state import Batch


def test_batch_keeps_keywords_and_new_attributes_in_vars():
    batch = Batch(xs=1, ys=2)
    batch.loss = 3
    batch.aux = "extra"
    assert vars(batch) == {"xs": 1, "ys": 2, "loss": 3, "aux": "extra"}
    assert repr(batch) == "Batch(xs=1, ys=2, loss=3, aux='extra')"


def test_batch_missing_attribute_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="'Batch' object has no attribute 'preds'"):
        _ = Batch(xs=1).preds
    assert not hasattr(Batch(), "loss")


def test_batch_equality_compares_contents_and_batches_are_unhashable():
    assert Batch(xs=1, ys=2) == Batch(xs=1, ys=2)
    assert Batch(xs=1, ys=2) != Batch(xs=1)
    assert Batch(xs=1) != {"xs": 1}
    with pytest.raises(TypeError, match="unhashable"):
        hash(Batch())


def test_built_in_steps_leave_a_batch_with_the_step_state():
    xs, ys = torch.randn(4, 3), torch.randint(0, 2, (4,))
    model = torch.nn.Linear(3, 2)
    learner = fp.Learner(model, torch.nn.functional.cross_entropy, use_default_callbacks=False,
                         optimizer=torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")
    learner.fit(1, ([(xs, ys)], [(xs, ys)]))
    batch = learner.batch
    assert type(batch) is Batch
    assert sorted(vars(batch)) == ["loss", "preds", "xs", "ys"]  # the validation step's
    assert batch.xs is xs and batch.ys is ys
    assert batch.preds.shape == (4, 2) and batch.loss.ndim == 0
