"""Figures a paper can use: PNG (200 dpi) and PDF, legends clear of the data, labels in the papers'
notation; accuracy axes from 0 for curves over training, zoomed (and saying so) where finished students
are compared, so that half a point shows. Each figure is inspected as drawn, just before it is written."""

from __future__ import annotations

import matplotlib.image
import pytest

from seal_exp import figures
from seal_exp.run import files as run_files


@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved through seal_exp.figures, kept for inspection before it is written."""
    kept = []
    real_save = figures.save

    def keep(fig, path):
        fig.canvas.draw()
        kept.append(
            [
                {
                    "ylim": ax.get_ylim(),
                    "xlim": ax.get_xlim(),
                    "xlabel": ax.get_xlabel(),
                    "ylabel": ax.get_ylabel(),
                    "lines": [line.get_label() for line in ax.get_lines() if line.get_gid() != "axis-break"],
                    "breaks": sum(1 for line in ax.get_lines() if line.get_gid() == "axis-break"),
                    "pixels_per_point": ax.get_window_extent().height / (ax.get_ylim()[1] - ax.get_ylim()[0]),
                    "title": ax.get_title(),
                    "texts": [t.get_text() for t in ax.texts],
                    "axes_box": ax.get_window_extent(),
                    "legend_box": ax.get_legend().get_window_extent() if ax.get_legend() else None,
                }
                for ax in fig.axes
            ]
        )
        return real_save(fig, path)

    monkeypatch.setattr(figures, "save", keep)
    return kept


def written_at_200_dpi(paths, inches_wide: float) -> None:
    png, pdf = paths
    assert png.suffix == ".png" and pdf.suffix == ".pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    assert (
        matplotlib.image.imread(png).shape[1] >= 0.8 * inches_wide * figures.DPI
    )  # tight bbox trims a little


def legends_clear_of_the_data(axes) -> None:
    for ax in axes:
        if ax["legend_box"] is not None:
            assert not ax["legend_box"].overlaps(ax["axes_box"]), "a legend covers the plot area"


def zoomed_to_show_half_a_point(ax, values) -> None:
    """Every value on the axis, which does not start at 0 and says so (label and break mark), and 0.5
    points at least 5 % of its height (about 25 pixels at 200 dpi on these figures)."""
    low, high = ax["ylim"]
    assert 0 < low <= min(values) and max(values) <= high
    assert ax["ylabel"].endswith(f"axis from {low:g} %, not 0") and ax["breaks"] == 2
    assert 0.5 * ax["pixels_per_point"] >= 0.05 * ax["axes_box"].height


def test_the_per_timestep_figure_shows_a_point_between_timesteps_and_to_the_teacher(tmp_path, drawn):
    """95.8 vs 96.8 vs a 97.6 teacher: on 0–100 these are one flat line; here they are apart."""
    per_t, prefix = [95.8, 96.8, 96.3, 96.5], [95.8, 96.3, 96.3, 96.35]
    paths = run_files.plot_accuracy_per_timestep(
        tmp_path / "per_timestep_accuracy.png", per_t, prefix, 97.6, "[smoke] title"
    )
    written_at_200_dpi(paths, 4.2)
    (ax,) = drawn[0]
    zoomed_to_show_half_a_point(ax, [*per_t, *prefix, 97.6])
    assert ax["ylabel"].startswith("test accuracy (%)") and ax["xlabel"] == "timestep t"
    assert ax["lines"] == ["timestep t alone", "mean of the first t timesteps", "ANN teacher (97.60%)"]
    legends_clear_of_the_data([ax])


def test_a_timestep_far_below_the_rest_is_marked_and_drawn_whole_in_an_overview(tmp_path, drawn):
    """Timestep 1 alone at 41 %: the zoom keeps the others half a point apart, marks 41.0 at its foot,
    and a second panel shows everything from 0."""
    per_t, prefix = [41.0, 95.8, 96.8, 96.5], [41.0, 90.3, 96.0, 96.4]
    run_files.plot_accuracy_per_timestep(tmp_path / "p.png", per_t, prefix, 97.6, "title")
    zoomed, whole = drawn[0]
    zoomed_to_show_half_a_point(zoomed, [95.8, 96.8, 96.5, 96.0, 96.4, 97.6])
    assert "↓41.0" in zoomed["texts"] and "↓90.3" in zoomed["texts"]
    assert whole["ylim"] == (0.0, 100.0) and whole["title"] == "the whole range, from 0"


def test_the_training_curves_figure(tmp_path, drawn):
    history = [
        {
            "epoch": e,
            "train/ce": 2.0 / e,
            "train/ela": 0.1 / e,
            "train/acc": 50.0 + e,
            "val/acc": 60.0 + e,
            "test/acc": 59.0 + e,
            "lr": 0.1,
        }
        for e in (1, 2, 3)
    ]
    paths = run_files.plot_training_curves(tmp_path / "training_curves.png", history, "title")
    written_at_200_dpi(paths, 7.5)
    losses, accuracies = drawn[0]
    assert losses["lines"] == ["ce", "ela"]  # every loss term
    assert losses["ylabel"] == "training loss term (log scale)"  # 2.0 and 0.03: one linear axis hides ela
    assert accuracies["lines"] == ["train", "validation", "test"] and accuracies["ylim"] == (0.0, 100.0)
    assert losses["xlabel"] == accuracies["xlabel"] == "epoch"
    legends_clear_of_the_data([losses, accuracies])
    for row in history:
        row["train/ela"] = 1.0 / row["epoch"]  # same magnitude: a linear axis from 0
    run_files.plot_training_curves(tmp_path / "again.png", history, "title")
    losses = drawn[1][0]
    assert losses["ylabel"] == "training loss term" and losses["ylim"][0] == 0.0


def test_the_comparison_figure(tmp_path, drawn):
    from seal_exp.results.comparison import plot

    table = [
        {
            "distiller": name,
            "settings": {},
            "test_acc": acc,
            "test_acc_sd": 0.5,
            "per_seed_test_acc": [acc - 0.5, acc + 0.5],
            "per_timestep_test_acc": [acc - 2, acc - 1, acc],
        }
        for name, acc in (("none", 93.0), ("kd", 95.0), ("seal", 96.0))
    ]
    written_at_200_dpi(plot(tmp_path / "comparison.png", table, "title"), 8.5)
    means, per_timestep = drawn[0]
    zoomed_to_show_half_a_point(means, [92.5, 93.5, 94.5, 95.5, 96.5])  # means ± sd and each seed
    zoomed_to_show_half_a_point(per_timestep, [91, 92, 93, 93, 94, 95, 94, 95, 96])
    assert per_timestep["lines"] == ["none", "kd", "seal"] and per_timestep["xlabel"] == "timestep t"
    legends_clear_of_the_data([means, per_timestep])

    table[0] |= {
        "test_acc": 40.0,
        "per_seed_test_acc": [39.5, 40.5],
        "per_timestep_test_acc": [20.0, 30.0, 40.0],
    }
    plot(tmp_path / "again.png", table, "title")
    means, per_timestep, whole_means, whole_per_t = drawn[1]  # a row far below: an overview from 0
    zoomed_to_show_half_a_point(means, [94.5, 95.5, 96.5])
    assert "↓40.0" in means["texts"] and "↓20.0" in per_timestep["texts"]
    assert whole_means["ylim"] == whole_per_t["ylim"] == (0.0, 100.0)


def _activity():
    from seal_exp.measures.activity import Activity, LayerActivity

    layers = [
        LayerActivity("features.0", 100, 0.10, [0.05, 0.10, 0.15]),
        LayerActivity("features.4", 50, 0.30, [0.20, 0.30, 0.40]),
    ]
    return Activity(
        samples=8,
        T=3,
        firing_rate=(100 * 0.10 + 50 * 0.30) / 150,
        firing_rate_per_timestep=[
            (100 * a + 50 * b) / 150 for a, b in ((0.05, 0.2), (0.1, 0.3), (0.15, 0.4))
        ],
        layers=layers,
        synops=1e6,
        macs=2e5,
        energy_uj=1.0,
        energy_simple_uj=None,
        regime="E_MAC 4.6 pJ × MACs + E_AC 0.9 pJ × SynOps",
    )


def test_the_measurement_figures(tmp_path, drawn):
    """Firing rates per timestep (lines, one per layer plus all layers) and per layer (bars) from 0; accuracy
    against T' and against the attack's ε on the 0-100 axis."""
    from seal_exp.measures import plots
    from seal_exp.measures.attacks import Robustness

    written_at_200_dpi(plots.firing_rates(tmp_path / "firing_rates.png", _activity(), "title"), 7.5)
    per_t, per_layer = drawn[0]
    assert per_t["ylim"][0] == 0 and per_t["ylim"][1] >= 0.40  # the highest rate is on the axis
    assert per_t["lines"] == ["features.0", "features.4", "all layers"]
    assert per_t["xlabel"] == "timestep t"
    assert per_layer["xlim"][0] == 0 and per_layer["xlim"][1] >= 0.30  # bars from 0
    assert "all layers: 0.167" in per_layer["xlabel"]
    legends_clear_of_the_data([per_t])
    written_at_200_dpi(
        plots.accuracy_at_timesteps(
            tmp_path / "at_t.png", {1: 60.0, 2: 80.0, 3: 90.0, 5: 91.0}, 3, [60.0, 79.0, 90.0], "t"
        ),
        4.2,
    )
    (ax,) = drawn[1]
    assert ax["ylim"] == (0.0, 100.0) and ax["xlabel"] == "timesteps T'"
    legends_clear_of_the_data([ax])
    result = Robustness("pgd", 8, 90.0, {0.01: 70.0, 0.03: 40.0}, 10, {0.01: 0.0025, 0.03: 0.0075})
    written_at_200_dpi(plots.robustness(tmp_path / "robustness.png", result, "t"), 4.2)
    (ax,) = drawn[2]
    assert ax["ylim"] == (0.0, 100.0) and ax["xlabel"].startswith("ε")
