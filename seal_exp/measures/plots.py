"""The figures of a student's measurements, in the platform's one style (:mod:`seal_exp.figures`):
firing rate per layer and timestep, accuracy against the number of timesteps T', robust accuracy
against the attack's budget ε."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seal_exp import figures
from seal_exp.measures.activity import Activity
from seal_exp.measures.attacks import Robustness


def firing_rates(path: Path, activity: Activity, title: str) -> list[Path]:
    """Left: each spiking layer's firing rate over the timesteps (input to output, light to dark).
    Right: each layer's rate over all timesteps, with the network's overall rate."""
    layers = activity.layers
    steps = list(range(1, activity.T + 1))
    with figures.style() as plt:
        fig, (per_t, per_layer) = plt.subplots(
            1, 2, figsize=(7.5, 3.4), gridspec_kw={"width_ratios": [1, 1.3]}, layout="constrained"
        )
        colours = plt.cm.viridis([0.85 * i / max(1, len(layers) - 1) for i in range(len(layers))])
        for layer, colour in zip(layers, colours, strict=True):
            per_t.plot(steps, layer.rate_per_timestep, "o-", ms=3, color=colour, lw=1, label=layer.name)
        per_t.plot(steps, activity.firing_rate_per_timestep, "k--", lw=1.5, label="all layers")
        per_t.set_xticks(steps)
        per_t.set_xlabel("timestep t")
        per_t.set_ylabel("firing rate (spikes per neuron per step)")
        per_t.set_ylim(0, max(0.05, 1.15 * max(max(la.rate_per_timestep) for la in layers)))
        figures.legend_below(per_t, ncol=2)
        positions = list(range(len(layers)))
        per_layer.barh(positions, [la.rate for la in layers], color=colours, height=0.6)
        per_layer.axvline(activity.firing_rate, color="k", ls="--", lw=1)
        per_layer.set_yticks(positions, [la.name for la in layers])
        per_layer.invert_yaxis()
        per_layer.set_xlim(0, max(0.05, 1.15 * max(la.rate for la in layers)))
        per_layer.set_xlabel(f"firing rate (all layers: {activity.firing_rate:.3f}, dashed)")
        fig.suptitle(f"{title}\n{activity.samples} test samples")
        return figures.save(fig, path)


def accuracy_at_timesteps(
    path: Path, accuracy: dict[int, float], trained_T: int, prefix_mean: Sequence[float] | None, title: str
) -> list[Path]:
    """Test accuracy of the student run at T' timesteps (a fresh network per T'), next to the mean of the
    first t outputs of the T-step run when known."""
    with figures.style() as plt:
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        steps = sorted(accuracy)
        ax.plot(steps, [accuracy[t] for t in steps], "o-", color="#08519c", label="run at T' timesteps")
        if prefix_mean:
            first = list(range(1, len(prefix_mean) + 1))
            ax.plot(
                first,
                prefix_mean,
                "s:",
                ms=3,
                color="#6baed6",
                label=f"first t outputs of the T={trained_T} run",
            )
        ax.axvline(trained_T, color="#a50f15", ls="--", lw=1, label=f"trained at T={trained_T}")
        figures.accuracy_axis(ax)
        ax.set_xticks(steps)
        ax.set_xlabel("timesteps T'")
        ax.set_title(title)
        figures.legend_below(ax, ncol=2)
        return figures.save(fig, path)


ATTACK_COLOURS = {"fgsm": "#e6550d", "pgd": "#a50f15"}


def robustness(path: Path, results: Robustness | Sequence[Robustness], title: str) -> list[Path]:
    """Accuracy under attack against the budget ε, one curve per attack, each starting at ε = 0 from the
    clean accuracy of the samples that attack was measured on (the attacks may be on different samples)."""
    results = [results] if isinstance(results, Robustness) else list(results)
    with figures.style() as plt:
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        budgets = sorted({0.0, *(eps for r in results for eps in r.acc)})
        for i, r in enumerate(results):
            steps = f", {r.steps} steps" if r.steps else ""
            xs = [0.0, *sorted(r.acc)]
            ys = [r.clean_acc, *(r.acc[e] for e in xs[1:])]
            colour = ATTACK_COLOURS.get(r.attack, "#3182bd")
            label = f"{r.attack.upper()}{steps}, {r.samples} test samples (clean {r.clean_acc:.1f})"
            ax.plot(xs, ys, "o-", color=colour, label=label)
            for eps, acc in zip(xs[1:], ys[1:], strict=True):
                ax.annotate(
                    f"{acc:.1f}",
                    (eps, acc),
                    textcoords="offset points",
                    xytext=(0, 5 if i % 2 == 0 else -11),  # alternate attacks above and below their points
                    ha="center",
                    fontsize=7,
                    color=colour,
                )
        figures.accuracy_axis(ax)
        ax.set_xlim(left=0)
        ax.set_xticks(budgets)
        ax.set_xlabel("ε (L∞, pixel units; 0: clean)")
        ax.set_title(title)
        figures.legend_below(ax, ncol=1)
        return figures.save(fig, path)
