"""Every figure kdrun draws: a run's training curves and its teacher's soft targets, and a
comparison's heatmap. matplotlib is imported only when one is drawn, and each figure is written
to a temporary file and renamed, so no reader sees half an image.

Figures are kept cheap on purpose: a sweep draws them once per job. Each kind of figure is made
once per process for each layout and redrawn with the next job's data, which saves a third to a
half of its time and gives the same PNG. Most of a small figure's time goes to tick objects,
text layout and the PNG encoder rather than to the data, so these figures place their own ticks
(few, fixed, no minor ticks), label the log axis in plain text (Unicode
superscripts: no mathtext parse, and no mathtext parser to build on a process's first figure),
pin titles at the top of their axes (else matplotlib measures every tick label to place them),
draw one legend per figure at a fixed place (no "best" search), and encode the PNG at zlib
level 3 (about half the time of the default 6, the file ~20% larger). No rcParams are changed.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from kdrun.run_files import MODELS, Metric, replace_atomically
PNG_OPTIONS = {"compress_level": 3}
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
# Tick mantissas for a log axis, coarsest first: the first that puts 3 ticks in view is used.
_LOG_SUBS = ((1,), (1, 3), (1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9))


def new_figure(**kwargs: Any):
    """A matplotlib Figure drawn by the Agg canvas, without importing pyplot (0.7 s here). The
    canvas is the figure's own, so a figure drawn again reuses its renderer and the sizes of its
    texts, measured the first time (a third of a redraw)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def savefig_atomic(fig, path: Path, **kwargs: Any) -> None:
    """Save ``fig`` beside ``path`` and rename it into place (a PNG with PNG_OPTIONS unless
    ``pil_kwargs`` says otherwise)."""
    fmt = path.suffix.lstrip(".") or "png"
    if fmt == "png":
        kwargs.setdefault("pil_kwargs", PNG_OPTIONS)
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))


def integer_ticks(low: int, high: int, most: int = 6) -> list[int]:
    """At most ``most`` round integers between low and high (epochs, say): every 1, 2, 5, 10, 20..."""
    step = 1
    while (high // step) - ((low - 1) // step) > most:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2  # 1, 2, 5, 10, 20, 50, ...
    return [t for t in range(math.ceil(low / step) * step, high + 1, step)]


def log_ticks(low: float, high: float, most: int = 6) -> tuple[list[float], list[str]]:
    """Positions and plain-text labels of 2..``most`` ticks for a log axis viewing low..high
    (0 < low <= high): powers of ten when the range spans enough decades, else 1-3, 1-2-5 or
    finer steps. Labels read 10⁻³ (or 2×10⁻⁶), or plain decimals when every tick is between
    0.001 and 1000, as matplotlib's do, but with no mathtext."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    ticks: list[tuple[float, int]] = []
    for subs in _LOG_SUBS:
        coarser = ticks
        ticks = [(m, e) for e in range(first, last + 1) for m in subs if low <= m * 10.0**e <= high]
        if len(ticks) >= 3:
            break
    if len(ticks) > most:
        if subs == (1,):  # every 2nd, 3rd... decade, 10⁰ kept
            step = math.ceil(len(ticks) / most)
            ticks = [(m, e) for m, e in ticks if e % step == 0]
        elif len(coarser) >= 2:
            ticks = coarser
    if len(ticks) < 2:  # a range narrower than the finest steps: label its ends
        return [low, high], [f"{low:.3g}", f"{high:.3g}"]
    plain = all(-3 <= e <= 2 for _, e in ticks)
    labels = []
    for m, e in ticks:
        power = "10" + str(e).translate(_SUPERSCRIPT)
        labels.append(f"{m * 10.0**e:g}" if plain else power if m == 1 else f"{m:g}×{power}")
    return [m * 10.0**e for m, e in ticks], labels


def _log_limits(values: Sequence[float]) -> tuple[float, float]:
    """The view of a log axis over these positive values, with matplotlib's 5% margins."""
    low, high = min(values), max(values)
    if low == high:
        return low / 1.5, high * 1.5
    margin = (high / low) ** 0.05
    return low / margin, high * margin


def _linear_limits(values: Sequence[float], floor: float, ceiling: float) -> tuple[float, float]:
    """A view of values that shows their differences (5% margins), clipped to [floor, ceiling]."""
    low, high = min(values), max(values)
    margin = max((high - low) * 0.05, 0.005)
    return max(floor, low - margin), min(ceiling, high + margin)


def plot_curves(path: Path, history: Sequence[dict], title: str = "") -> None:
    """The students' held-out accuracy and cross-entropy per epoch (the question: does the
    distilled student beat the baseline?), each on one scale for both students, with the
    trained teacher's final values as a dashed reference line (its own epochs are another
    schedule). The objective each student minimised differs (the distilled one's includes the
    teacher's term), so the figure compares what both are judged on: val accuracy and val CE.

    A sweep draws this figure once per job, so the figure, its axes, lines and legend are made
    once per process for each layout (which models, with markers or not) and their data, limits,
    ticks and title set for each job: 0.12 s instead of a new figure's 0.19 s on a 2-core x86 CPU,
    and the same PNG (tests/test_plots.py)."""
    rows = {}
    for model in MODELS:
        finite = [r for r in history if r["model"] == model and math.isfinite(r.get("val_acc", math.nan))]
        if finite:
            rows[model] = finite
    teacher = rows.get("teacher")
    teacher_loss = bool(teacher) and teacher[-1]["val_loss"] > 0
    layout = tuple((model, len(r) <= 40) for model, r in rows.items()) + (teacher_loss,)
    students = any(model != "teacher" for model in rows)
    # Only a figure whose limits are all set below is kept: without students its view is autoscaled.
    figure = _curve_figures.get(layout) if students else None
    if figure is None:
        figure = _CurvesFigure(layout)
        if students:
            _curve_figures[layout] = figure
    figure.draw(path, rows, title)


class _CurvesFigure:
    """plot_curves's figure for one layout: made once, redrawn with each job's data."""

    def __init__(self, layout: tuple) -> None:
        from matplotlib.ticker import NullLocator

        *models, teacher_loss = layout
        self.fig = new_figure(figsize=(11, 4.3))
        self.acc_ax, self.loss_ax = self.fig.subplots(1, 2)
        self.lines = {}
        for model, markers in models:
            style = {"color": f"C{MODELS.index(model)}", "label": model}  # a model keeps its colour when another is missing
            if model == "teacher":  # a reference: where the students could get
                self.lines[model] = (
                    self.acc_ax.axhline(0.5, linestyle="--", linewidth=1.2, **style),
                    self.loss_ax.axhline(1.0, linestyle="--", linewidth=1.2, **style) if teacher_loss else None,
                )  # fmt: skip
            else:
                marker = "." if markers else None
                self.lines[model] = (self.acc_ax.plot([], [], marker=marker, **style)[0], self.loss_ax.plot([], [], marker=marker, **style)[0])
        self.acc_ax.set_title("Validation accuracy", y=1.0)  # a given y: matplotlib does not measure the ticks to place it
        self.acc_ax.set(xlabel="student epoch", ylabel="accuracy")
        self.loss_ax.set_title("Validation cross-entropy", y=1.0)
        self.loss_ax.set(xlabel="student epoch", ylabel="cross-entropy (log scale)")
        self.loss_ax.set_yscale("log")
        self.loss_ax.yaxis.set_minor_locator(NullLocator())  # a log axis's ~70 minor ticks cost ~20% of the figure
        for ax in (self.acc_ax, self.loss_ax):
            ax.grid(alpha=0.3)
        handles, names = self.acc_ax.get_legend_handles_labels()
        if handles:  # one legend for both panels, the teacher named as the reference it is
            names = [f"{name} (final, for reference)" if name == "teacher" else name for name in names]
            self.fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.895), ncol=len(handles), frameon=False, fontsize=9)
        self.fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.78, wspace=0.22)  # tight_layout would draw twice

    def draw(self, path: Path, rows: dict[str, list[dict]], title: str) -> None:
        accuracies, losses, epochs = [], [], []
        for model, (acc_line, loss_line) in self.lines.items():
            if model == "teacher":
                last = rows[model][-1]
                acc_line.set_ydata([last["val_acc"]] * 2)
                accuracies.append(last["val_acc"])
                if loss_line is not None:
                    loss_line.set_ydata([last["val_loss"]] * 2)
                    losses.append(last["val_loss"])
                continue
            x = [r["epoch"] for r in rows[model]]
            acc_line.set_data(x, [r["val_acc"] for r in rows[model]])
            loss_line.set_data(x, [r["val_loss"] for r in rows[model]])
            epochs += x
            accuracies += [r["val_acc"] for r in rows[model]]
            losses += [r["val_loss"] for r in rows[model] if r["val_loss"] > 0 and math.isfinite(r["val_loss"])]
        if accuracies:
            self.acc_ax.set_ylim(*_linear_limits(accuracies, 0.0, 1.0))
        low, high = _log_limits(losses) if losses else (0.1, 10.0)
        self.loss_ax.set_ylim(low, high)
        self.loss_ax.set_yticks(*log_ticks(low, high))
        if epochs:
            for ax in (self.acc_ax, self.loss_ax):
                ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
                ax.set_xticks(integer_ticks(min(epochs), max(epochs), most=6))
        self.fig.suptitle(title, y=0.985, fontsize=11)
        savefig_atomic(self.fig, path, dpi=100)


_curve_figures: dict[tuple, _CurvesFigure] = {}


def plot_temperature(
    path: Path, probabilities: dict[float, Sequence[Sequence[float]]], labels: Sequence[int], run_temperature: float
) -> None:
    """The trained teacher's softmax on a few held-out examples (one panel each), one line per
    temperature: how T spreads the probability mass over the wrong classes, which is what the
    student learns from. The run's own T is drawn thick.

    The jobs of a sweep that share a teacher and a T get a copy of the PNG; like plot_curves's,
    the figure is made once per layout (temperatures, examples' classes) and redrawn with each
    teacher's probabilities and run's T."""
    shown = repr((sorted(probabilities.items()), list(labels), run_temperature))
    drawn = _temperature_pngs.get(shown)
    if drawn is not None:
        replace_atomically(path, lambda tmp: tmp.write_bytes(drawn))
        return
    temperatures = tuple(sorted(probabilities))
    classes = max((len(p[0]) for p in probabilities.values()), default=0)
    layout = (temperatures, tuple(labels), classes)
    figure = _temperature_figures.get(layout) or _latest(_temperature_figures, layout, _TemperatureFigure(temperatures, labels, classes))
    figure.draw(path, probabilities, run_temperature)
    _latest(_temperature_pngs, shown, path.read_bytes())


class _TemperatureFigure:
    """One panel per example; for each class a group of dots, one per temperature side by side
    (classes are separate categories: no line joins them), each T its own colour, the run's own T
    larger and outlined. Made once, redrawn with each teacher's probabilities and run's T."""

    def __init__(self, temperatures: Sequence[float], labels: Sequence[int], classes: int) -> None:
        self.fig = new_figure(figsize=(max(4.2, 0.45 * classes + 1.5) * len(labels), 3.8))
        axes = self.fig.subplots(1, len(labels), squeeze=False, sharey=True)[0]
        spread = 0.7 / max(1, len(temperatures))
        self.points = {}  # (example, temperature): its dots
        for column, ax in enumerate(axes):
            ax.axvspan(labels[column] - 0.45, labels[column] + 0.45, color="tab:orange", alpha=0.18, linewidth=0)
            for rank, temperature in enumerate(temperatures):
                offset = (rank - (len(temperatures) - 1) / 2) * spread
                self.points[column, temperature] = ax.plot(
                    [c + offset for c in range(classes)], [0.0] * classes, linestyle="none", marker="o",
                    markeredgewidth=1.2, color=f"C{rank % 10}",
                )[0]  # fmt: skip
            ax.set_title(f"held-out example {column} (true class {labels[column]})", y=1.0)
            ax.set(xlabel="class", ylim=(0, 1.02))
            ax.grid(alpha=0.3, axis="y")
        if classes:
            ticks = list(range(classes)) if classes <= 20 else integer_ticks(0, classes - 1, most=10)
            for ax in axes:
                ax.set_xlim(-0.5, classes - 0.5)
                ax.set_xticks(ticks)
        axes[0].set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1], ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"])  # shared
        axes[0].set_ylabel("teacher probability")
        self.fig.suptitle("The trained teacher's soft targets at several temperatures (orange band: the true class)", y=0.985)
        self.fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.78, wspace=0.06)
        self.temperatures = temperatures

    def draw(self, path: Path, probabilities: dict[float, Sequence[Sequence[float]]], run_temperature: float) -> None:
        for (column, temperature), points in self.points.items():
            own = temperature == run_temperature
            points.set(ydata=probabilities[temperature][column], markersize=6.5 if own else 4.5, markeredgecolor="black" if own else "none")
        # The legend names the run's T, so it is made anew for each run: one row under the title.
        self.fig.legends.clear()
        if self.temperatures:
            handles = [self.points[0, t] for t in self.temperatures]
            names = [f"T={t:g}" + (" (this run)" if t == run_temperature else "") for t in self.temperatures]
            self.fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.925), ncol=len(handles), frameon=False, fontsize=9)
        savefig_atomic(self.fig, path, dpi=100)


# The temperature figures of this process by layout, and the PNGs drawn by what they show, the
# latest 16 of each: a sweep over seeds and settings, in any order, draws each teacher and T once.
_temperature_figures: dict[tuple, _TemperatureFigure] = {}
_temperature_pngs: dict[str, bytes] = {}


def _latest(cache: dict, key: Any, value: Any, most: int = 16) -> Any:
    """Store ``value`` under ``key`` in ``cache``, dropping the oldest entry beyond ``most``; return it."""
    cache[key] = value
    if len(cache) > most:
        cache.pop(next(iter(cache)))
    return value


def signed_label(value: float, metric: Metric) -> str:
    """A heatmap cell's mean: +1.3 (points) or -0.030; one that rounds to 0 reads +0.0, not -0.0."""
    text = f"{value:+.1f}" if metric.percent else f"{value:+.3f}"
    return text.replace("-", "+") if float(text) == 0 else text


def draw_heatmap(path: Path, cells: dict[tuple[float, float], list[float]], metric: Metric, setup: str = "") -> None:
    """Mean improvement (distilled − baseline) over the alpha × temperature grid of one set-up,
    each cell annotated with its mean over seeds; blue is where distillation helps. With two or
    more seeds in a cell, a star marks a 95% t-interval that excludes 0. Cells without runs are
    grey and say so. When every cell has the same number of seeds the count is said once, in the
    title."""
    from matplotlib import colormaps

    from kdrun.stats import mean_ci

    scale = 100.0 if metric.percent else 1.0
    alphas = sorted({a for a, _ in cells})
    temperatures = sorted({t for _, t in cells})
    grid = [[scale * statistics.fmean(cells[(a, t)]) if cells.get((a, t)) else math.nan for t in temperatures] for a in alphas]
    finite = [abs(v) for row in grid for v in row if not math.isnan(v)]
    limit = max(finite + [1e-9])
    counts = {len(v) for v in cells.values() if v}
    per_cell = len(counts) > 1  # else the title gives the one count
    width, height = max(6.0, 1.2 * len(temperatures) + 3.4), 0.75 * len(alphas) + 2.3
    fig = new_figure(figsize=(width, height))
    ax = fig.subplots()
    fig.subplots_adjust(left=1.3 / width, right=1 - 0.3 / width, bottom=0.8 / height, top=1 - 1.05 / height)  # no tight_layout: it draws twice
    cmap = colormaps["RdBu" if metric.higher_is_better else "RdBu_r"].with_extremes(bad="0.85")
    image = ax.imshow(grid, cmap=cmap, vmin=-limit, vmax=limit, origin="lower", aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            values = cells.get((alphas[i], temperatures[j])) or []
            if math.isnan(value):
                ax.text(j, i, "no run", ha="center", va="center", fontsize=8, color="0.35")
                continue
            _, low, high = mean_ci(values)
            star = "*" if len(values) > 1 and (low > 0 or high < 0) else ""
            text = signed_label(value, metric) + star
            ax.text(j, i, text + (f"\nn={len(values)}" if per_cell else ""), ha="center", va="center", fontsize=9,
                    fontweight="bold" if star else "normal", color="white" if abs(value) > 0.6 * limit else "black")  # fmt: skip
    ax.set_xticks(range(len(temperatures)), [f"{t:g}" for t in temperatures])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set(xlabel="temperature T", ylabel="alpha (soft-target weight)")
    unit = "points" if metric.percent else metric.title
    notes = []
    if counts and not per_cell and max(counts) > 1:
        notes.append(f"mean of {max(counts)} seeds per cell")
    if any(len(v) > 1 for v in cells.values()):
        notes.append("* 95% interval excludes 0")
    lines = [f"Distilled − baseline {metric.title} ({unit})", "; ".join(notes), setup]
    ax.set_title("\n".join(line for line in lines if line), fontsize=10, y=1.0)  # a given y: no tick measuring
    fig.colorbar(image, ax=ax, label=f"improvement ({unit})")
    savefig_atomic(fig, path, dpi=150)


def draw_forest(path: Path, groups: Sequence[dict], keys: Sequence[str], metric: Metric) -> None:
    """Each configuration's mean paired improvement (distilled − baseline, over its seeds) with
    its 95% t-interval, a row each, best at the top; a dashed line at 0 (no effect). The figure
    a comparison of methods (loss=kd,dkd,dist ...) or of any settings that are not an alpha × T
    grid needs. Rows with one seed have no interval: a point alone."""
    scale = 100.0 if metric.percent else 1.0
    unit = "points" if metric.percent else metric.title
    sign = 1.0 if metric.higher_is_better else -1.0
    rows = sorted((g for g in groups if not math.isnan(g["improvement_mean"])), key=lambda g: sign * g["improvement_mean"])
    height = 0.42 * len(rows) + 1.8
    fig = new_figure(figsize=(9.0, height))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.27, right=0.76, bottom=0.9 / height, top=1 - 0.75 / height)
    for y, row in enumerate(rows):
        mean, low, high = (scale * row[k] for k in ("improvement_mean", "improvement_ci_low", "improvement_ci_high"))
        helps = (low > 0 or high < 0) and not math.isnan(low)
        colour = ("tab:blue" if sign * mean > 0 else "tab:red") if helps else "0.35"
        if not math.isnan(low):
            ax.plot([low, high], [y, y], color=colour, linewidth=2)
        ax.plot([mean], [y], "o", color=colour, markersize=6)
        interval = "" if math.isnan(low) else f" [{low:+.1f}, {high:+.1f}]" if metric.percent else f" [{low:+.3f}, {high:+.3f}]"
        text = f"{mean:+.1f}{interval}" if metric.percent else f"{mean:+.3f}{interval}"
        ax.annotate(f"{text}  n={row['n']}", (1.0, y), xycoords=("axes fraction", "data"), xytext=(8, 0), textcoords="offset points",
                    ha="left", va="center", fontsize=9, color=colour)  # fmt: skip
    ax.axvline(0, color="0.5", linestyle="--", linewidth=1)
    labels = [", ".join(f"{k}={row[k]}" for k in keys) or "all runs" for row in rows]
    ax.set_yticks(range(len(rows)), labels)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(f"distilled − baseline {metric.title} ({unit})")
    ax.set_title("Paired improvement over the baseline: mean over seeds, 95% interval\n(blue or red: the interval excludes 0)", fontsize=10, y=1.0)
    ax.grid(alpha=0.3, axis="x")
    savefig_atomic(fig, path, dpi=150)
