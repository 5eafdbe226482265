"""The class-row rule (eva02.backbone.class_rows) on hand-laid tensors."""
import pytest
import torch

from eva02.backbone.class_rows import ClassRows, adapt_class_rows


def rows(values, width=2):
    return torch.tensor([[float(v)] * width for v in values])


def test_shared_classes_keep_their_rows_by_name_and_the_background_row_stays():
    trained = rows([10, 11, 12, 19])  # classes a, b, c, then background
    initial = rows([0, 0, 0])  # the new model: classes c, z, then background
    out, carried = adapt_class_rows(trained, initial, ClassRows(1, 1), ["a", "b", "c"], ["c", "z"])
    assert carried == ["c"]
    assert out.tolist() == rows([12, 0, 19]).tolist()
    assert initial.sum() == 0  # the model's own tensor is not written


def test_blocks_of_rows_per_class_and_no_names():
    trained = torch.arange(12.0)[:, None]  # 3 classes x 4 box deltas, no extra row
    initial = -torch.ones(8, 1)
    out, carried = adapt_class_rows(trained, initial, ClassRows(4, 0), ["a", "b", "c"], ["b", "a"])
    assert carried == ["b", "a"] and out.squeeze(1).tolist() == [4, 5, 6, 7, 0, 1, 2, 3]
    fresh, none = adapt_class_rows(trained, initial, ClassRows(4, 0), None, ["b", "a"])
    assert none == [] and torch.equal(fresh, initial)  # without names, row i means nothing: all fresh


def test_layouts_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="beyond the class dimension"):
        adapt_class_rows(torch.zeros(3, 2), torch.zeros(3, 5), ClassRows(1, 1), None, None)
    with pytest.raises(ValueError, match="no class count"):
        adapt_class_rows(torch.zeros(6, 1), torch.zeros(8, 1), ClassRows(4, 0), None, None)
    with pytest.raises(ValueError, match="2 class names for a layer of 3 classes"):
        adapt_class_rows(torch.zeros(4, 1), torch.zeros(3, 1), ClassRows(1, 1), ["a", "b"], None)
