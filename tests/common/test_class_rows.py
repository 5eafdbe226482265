"""The class-row rule (eva02.common.class_rows) on hand-laid tensors."""
import pytest
import torch

from eva02.common.class_rows import ClassRows, adapt_class_rows, relay_class_layers


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


def test_layers_relaid_when_counts_or_names_differ():
    """Weight and bias of a layer re-laid together; the same count under other names is re-laid too (row i of one
    class list is not row i of another); unknown names with equal shapes, or rows fitting no count, left as is."""
    layouts = {"head.cls.weight": ClassRows(1, 1), "head.cls.bias": ClassRows(1, 1), "head.box.weight": ClassRows(4, 0)}
    own = {"head.cls.weight": rows([0, 0, 0]), "head.cls.bias": torch.zeros(3), "head.box.weight": torch.zeros(7, 1),
           "other.weight": torch.zeros(2, 2)}
    state = {"head.cls.weight": rows([10, 11, 19]), "head.cls.bias": torch.tensor([1.0, 2.0, 9.0]),
             "head.box.weight": torch.arange(6.0)[:, None], "other.weight": torch.ones(2, 2)}
    lines = relay_class_layers(state, own, layouts.get, ["a", "b"], ["b", "a"])
    assert state["head.cls.weight"].tolist() == rows([11, 10, 19]).tolist()
    assert state["head.cls.bias"].tolist() == [2.0, 1.0, 9.0]
    assert state["head.box.weight"].shape == (6, 1) and torch.equal(state["other.weight"], torch.ones(2, 2))
    assert lines == ["head.cls: checkpoint 2 classes -> model 2; 2 carried over by name (b, a), the rest start "
                     "from their initialization; its 1 background / no-object row(s) carried over"]

    state = {"head.cls.weight": rows([10, 11, 19])}
    assert relay_class_layers(state, own, layouts.get, None, ["b", "a"]) == []  # no way to tell: as it is
    assert state["head.cls.weight"].tolist() == rows([10, 11, 19]).tolist()

    state = {"head.cls.weight": rows([10, 11, 12, 19])}  # 3 classes, the checkpoint names none
    (line,) = relay_class_layers(state, own, layouts.get, None, ["b", "a"])
    assert state["head.cls.weight"].tolist() == rows([0, 0, 19]).tolist()
    assert "checkpoint 3 classes -> model 2; no class carried over (the checkpoint names no classes)" in line
