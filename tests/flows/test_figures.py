"""The train flow's figures, read back from their matplotlib artists: what is drawn is what the
records say (no servers; ``flows.tracking`` logs these figures)."""

from __future__ import annotations

import numpy as np

from flows.figures import confusion_figure, training_curves_figure


def records(epochs: int, member: int | None = None, offset: int = 0) -> list[dict]:
    out = []
    for e in range(1, epochs + 1):
        record = {"epoch": offset + e, "train": {"loss": 1.0 / e}, "valid": {"UA": 0.1 * e}}
        if member is not None:
            record["member"] = member
        out.append(record)
    return out


def panels(fig) -> dict[str, list]:
    return {ax.get_title(): ax.get_lines() for ax in fig.axes if ax.get_title()}


def test_one_line_per_fold_with_its_epochs_and_values():
    fig = training_curves_figure({0: records(3), 1: records(2)}, "curves")
    lines = panels(fig)
    assert set(lines) == {"train.loss", "valid.UA"}
    (fold0, fold1) = lines["valid.UA"]
    assert fold0.get_label() == "fold 0" and list(fold0.get_xdata()) == [1, 2, 3]
    np.testing.assert_allclose(fold1.get_ydata(), [0.1, 0.2])


def test_an_ensemble_release_draws_each_member_apart_and_member_is_no_panel():
    members = records(3, member=0) + records(3, member=1, offset=3)  # numbered one after the other
    lines = panels(training_curves_figure({-1: members}, "release"))
    assert set(lines) == {"train.loss", "valid.UA"}, "member is an index, not a curve"
    first, second = lines["train.loss"]
    assert (first.get_label(), second.get_label()) == ("fold -1 member 0", "fold -1 member 1")
    assert list(first.get_xdata()) == [1, 2, 3] and list(second.get_xdata()) == [4, 5, 6]
    np.testing.assert_allclose(second.get_ydata(), [1.0, 0.5, 1 / 3])


def test_the_confusion_figure_shows_each_count_and_its_row_recall():
    confusion = np.array([[3, 1], [0, 2]])
    fig = confusion_figure(confusion, ["a", "b"], "fold 0")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["3\n75%", "1\n25%", "0\n0%", "2\n100%"]
