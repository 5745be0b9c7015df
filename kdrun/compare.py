"""``kdrun compare DIR [DIR ...]``: one table of every run below some directories.

A *run* is a directory holding ``.hydra/`` and ``status.json`` and/or ``summary.csv`` (what one
``kdrun train`` job leaves). Only a run whose status is ``completed`` and whose ``summary.csv`` is
whole counts as a result; failed, interrupted and still-running jobs are listed as such and never
averaged in, and a malformed ``summary.csv`` is named on stderr, skipped and counted.

The module reads CSV and YAML only. It imports no torch, and no pandas; matplotlib is imported
only to draw the figures, so comparing a hundred runs takes well under a second.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import yaml

from kdrun.errors import EXIT_FAILED, EXIT_USAGE
from kdrun.run_files import (
    METRICS, MODELS, RESULT_UNCHANGED_KEYS, STATUS_FILE, Metric, csv_text, natural_order, read_status, short_number, write_csv_atomic,
)
from kdrun.stats import mean_ci

EXIT_OK = 0

SUMMARY_FILE = "summary.csv"
COMPARISON_FILE = "comparison.csv"
BY_CONFIG_FILE = "comparison_by_config.csv"
HEATMAP_FILE = "heatmap.png"
FOREST_FILE = "forest.png"
SEED_KEY = "trainer.seed"
TEACHER_FILE_KEY = "teacher file sha256"  # a setting of runs that loaded model.teacher.checkpoint


class CompareError(Exception):
    """Bad input to ``kdrun compare``: reported as one line, exit code 2."""


@dataclass
class Run:
    """One run directory: its status, its settings, and (when completed) its summary rows."""

    path: Path
    status: str
    message: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    rows: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> summary.csv row
    teacher_sha256: str = ""  # of the model.teacher.checkpoint file it loaded, if any
    config: Optional[dict] = None  # its .hydra/config.yaml, read once

    @property
    def counted(self) -> bool:
        return self.status == "completed"

    def value(self, model: str, column: str) -> float:
        return _float(self.rows.get(model, {}).get(column))

    def summary_field(self, column: str) -> str:
        return self.rows.get("distilled", {}).get(column, "")


@dataclass
class Comparison:
    """What ``kdrun compare`` found: the runs listed (completed or not) and the skipped ones."""

    runs: list[Run]
    skipped: list[Run]  # malformed summary.csv
    varying: list[str]  # settings whose values differ across the listed runs
    metric: Metric


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


# --------------------------------------------------------------------------- finding and reading runs


def find_run_dirs(root: Path) -> list[Path]:
    """Every run directory at or below ``root``; does not look inside a run, nor in hidden folders
    (``.hydra``, ``.submitit``)."""
    found, stack = [], [root]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        names = {entry.name for entry in entries}
        if ".hydra" in names and (STATUS_FILE in names or SUMMARY_FILE in names):
            found.append(directory)
            continue
        stack.extend(Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    return sorted(found, key=lambda path: natural_order(str(path)))


def _load_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return None


def format_value(value: Any) -> str:
    """One spelling per value, so that 4, 4.0 and '4' from different runs compare equal."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):  # 4.0 as 4, and 0.1234567 apart from 0.1234568
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, str):  # an override's text: "4" and "[16]" read as YAML, like Hydra does
        try:
            parsed = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            return value
        return value if isinstance(parsed, str) else format_value(parsed)
    return str(value)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}"))
    return flat


def _flat_config(config: Any) -> dict[str, Any]:
    """A run's config.yaml flattened, a value that is another key's (``${model.recipe_dkd_beta}``,
    as a preset writes it) replaced by that key's value, as the run read it."""
    flat = _flatten(config or {})
    for _ in range(len(flat)):  # a chain of them resolves one link a pass
        linked = {k: v[2:-1] for k, v in flat.items() if isinstance(v, str) and v.startswith("${") and v.endswith("}") and v[2:-1] in flat}
        if not linked:
            break
        flat.update((key, flat[target]) for key, target in linked.items())
    return flat


def _override_keys(run_dir: Path) -> list[str]:
    overrides = _load_yaml(run_dir / ".hydra" / "overrides.yaml")
    keys = []
    for item in overrides if isinstance(overrides, list) else []:
        key = str(item).split("=", 1)[0].lstrip("+~")
        if key and not key.startswith("hydra.") and not key.startswith("hydra/"):
            keys.append(key)
    return keys


def _group_choices(run_dir: Path) -> dict[str, Any]:
    hydra_yaml = _load_yaml(run_dir / ".hydra" / "hydra.yaml")
    try:
        return dict(hydra_yaml["hydra"]["runtime"]["choices"])
    except (TypeError, KeyError):
        return {}


def read_settings(run_dir: Path, keys: Iterable[str], config: Optional[dict] = None) -> dict[str, str]:
    """The run's values of ``keys``: from its composed ``.hydra/config.yaml`` (typed, so a default
    and an override spell alike), else, for a config group (``experiment=…``), its choice."""
    flat = _flat_config(config if config is not None else _load_yaml(run_dir / ".hydra" / "config.yaml"))
    settings, choices = {}, None
    for key in keys:
        if key in flat:
            settings[key] = format_value(flat[key])
            continue
        if choices is None:
            choices = _group_choices(run_dir)
        settings[key] = format_value(choices.get(key)) if key in choices else "-"
    return settings


def read_summary(path: Path, metric: Metric) -> dict[str, dict[str, str]]:
    """summary.csv's rows by model. Raises ValueError naming what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError("no summary.csv") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"unreadable summary.csv ({error})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = {"model", metric.column} - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"summary.csv lacks column(s) {', '.join(sorted(missing))}")
    rows = {row["model"]: row for row in reader}
    for model in MODELS:
        if model not in rows:
            raise ValueError(f"summary.csv has no {model} row")
        not_trained = rows[model].get("source") == "not_trained"  # e.g. a baseline without labels
        if not not_trained and not math.isfinite(_float(rows[model].get(metric.column))):
            raise ValueError(f"summary.csv: {model} {metric.column} is not a number ({rows[model].get(metric.column)!r})")
    return rows


def _float(text: Optional[str]) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _read_status(run_dir: Path) -> tuple[str, str, str]:
    """status.json's status, message and teacher file's sha256."""
    record = read_status(run_dir)
    if record is None:
        exists = (run_dir / STATUS_FILE).exists()
        return "unknown", "unreadable status.json" if exists else "no status.json", ""
    return str(record.get("status", "unknown")), str(record.get("message", "") or ""), str(record.get("teacher_sha256", "") or "")


def read_run(run_dir: Path, metric: Metric) -> Run:
    """A run's status and, when it completed, its summary; ``malformed`` when status.json says
    completed but summary.csv is missing, partial or not numbers."""
    status, message, teacher = _read_status(run_dir)
    run = Run(run_dir, status, message, teacher_sha256=teacher)
    if status != "completed":
        return run
    try:
        run.rows = read_summary(run_dir / SUMMARY_FILE, metric)
    except ValueError as error:
        run.status, run.message = "malformed", str(error)
        return run
    config, overrides = _load_yaml(run_dir / ".hydra" / "config.yaml"), _load_yaml(run_dir / ".hydra" / "overrides.yaml")
    if not isinstance(config, dict) or not isinstance(overrides, list):  # its settings cannot be told: never pooled with others
        bad = ".hydra/config.yaml" if not isinstance(config, dict) else ".hydra/overrides.yaml"
        run.status, run.message = "malformed", f"{bad} is missing or not the YAML kdrun wrote"
    run.config = config
    return run


def _unnamed_differences(runs: Sequence[Run], keys: Sequence[str]) -> list[str]:
    """The settings, outside ``keys``, in which runs that agree on ``keys`` differ (the seed aside,
    and those that change nothing measured): a config file's value that no override names (the
    same command with another --config-dir, say), which would otherwise pool them as seeds."""
    alike: dict[tuple, list[dict]] = {}
    for run in runs:
        if run.config is not None:
            alike.setdefault(tuple(run.settings.get(k) for k in keys), []).append(_flat_config(run.config))
    found = []
    for flats in alike.values():
        for key in sorted(set().union(*flats)) if len(flats) > 1 else []:
            if key == SEED_KEY or key in keys or any(key == u or key.startswith(u + ".") for u in RESULT_UNCHANGED_KEYS):
                continue
            if len({format_value(flat.get(key)) for flat in flats}) > 1:
                found.append(key)
    return list(dict.fromkeys(found))


def collect(dirs: Sequence[Path], metric: str = "test_acc") -> Comparison:
    """Find and read every run below ``dirs``; work out which settings vary across them."""
    if metric not in METRICS:
        raise CompareError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    for directory in dirs:
        if not directory.is_dir():
            raise CompareError(f"{directory} is a file, not a directory of runs" if directory.exists() else f"no such directory: {directory}")
    paths = list(dict.fromkeys(p for d in dirs for p in find_run_dirs(d)))
    if not paths:
        raise CompareError(f"no runs (directories with .hydra/ and status.json or summary.csv) below {', '.join(map(str, dirs))}")
    runs = [read_run(path, METRICS[metric]) for path in paths]
    listed = [r for r in runs if r.status != "malformed"]
    # The settings runs were given: those of the runs that completed (a failed run's misspelt key
    # is no setting), and the seed, which tells repeats apart.
    given_by = [r for r in listed if r.counted] or listed
    keys = list(dict.fromkeys(k for r in given_by for k in _override_keys(r.path) if k not in RESULT_UNCHANGED_KEYS))
    for run in listed:
        run.settings = read_settings(run.path, list(dict.fromkeys([*keys, SEED_KEY])), run.config)
    unnamed = _unnamed_differences(given_by, keys)  # runs that read alike, yet were run otherwise
    if unnamed:
        keys += unnamed
        for run in listed:
            run.settings = read_settings(run.path, list(dict.fromkeys([*keys, SEED_KEY])), run.config)
    if len({r.teacher_sha256 for r in listed if r.teacher_sha256}) > 1:  # one path may have held several teachers
        keys.append(TEACHER_FILE_KEY)
        for run in listed:
            run.settings[TEACHER_FILE_KEY] = run.teacher_sha256[:12] or "-"
    varying = [k for k in keys if len({r.settings[k] for r in listed}) > 1]
    return Comparison(listed, [r for r in runs if r.status == "malformed"], varying, METRICS[metric])


# --------------------------------------------------------------------------- tables


def _numeric_key(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def run_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """One row per run: the varying settings, each model's metric, improvement and gap (raw
    fractions, not percentages). Runs that did not complete have empty metrics."""
    column = comparison.metric.column
    rows = []
    for run in comparison.runs:
        row: dict[str, Any] = {key: run.settings.get(key, "") for key in comparison.varying}
        values = {model: run.value(model, column) if run.counted else math.nan for model in MODELS}
        row.update({f"{model}_{column}": values[model] for model in MODELS})
        row["improvement"] = values["distilled"] - values["baseline"]
        row["gap"] = values["teacher"] - values["distilled"]
        row.update(status=run.status, message=run.message, run_dir=str(run.path))
        for name in _summary_fields(comparison):
            row[name] = run.summary_field(name)
        rows.append(row)
    return rows


# summary.csv's copies of settings, and the config key each copies: comparison.csv shows one of
# each, the varying setting's column when there is one.
_SUMMARY_SETTINGS = {"dataset": "dataset", "alpha": "loss.alpha", "temperature": "loss.temperature", "seed": SEED_KEY}


def _summary_fields(comparison: Comparison) -> list[str]:
    """The summary.csv settings comparison.csv repeats: those whose config key does not vary."""
    return [name for name, key in _SUMMARY_SETTINGS.items() if key not in comparison.varying]


def run_columns(comparison: Comparison) -> list[str]:
    column = comparison.metric.column
    return [*comparison.varying, *(f"{m}_{column}" for m in MODELS), "improvement", "gap", "status", *_summary_fields(comparison), "run_dir", "message"]


def _seed(run: Run) -> str:
    return run.settings.get(SEED_KEY) or run.summary_field("seed")


def _by_seed(runs: Sequence[Run], value) -> list[float]:
    """``value(run)`` for each distinct seed: the mean over a seed's repeats, which are not
    independent samples (the same seed gives the same result, up to rounding)."""
    per_seed: dict[str, list[float]] = {}
    for run in runs:
        v = value(run)
        if math.isfinite(v):
            per_seed.setdefault(_seed(run), []).append(v)
    return [statistics.fmean(values) for values in per_seed.values()]


def config_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """Runs that differ only in trainer.seed, grouped: over the distinct seeds (repeats of a seed
    averaged first), mean, std and n of each model's metric, and the paired improvement
    (distilled − baseline of the same seed) with its 95% t-interval. Runs that did not complete
    are counted in ``not_counted``, never averaged."""
    keys = [k for k in comparison.varying if k != SEED_KEY]
    column = comparison.metric.column
    groups: dict[tuple, list[Run]] = {}
    for run in comparison.runs:
        groups.setdefault(tuple(run.settings.get(k, "") for k in keys), []).append(run)
    rows = []
    for values, runs in groups.items():
        done = [r for r in runs if r.counted]
        seeds = list(dict.fromkeys(_seed(r) for r in done))
        row: dict[str, Any] = dict(zip(keys, values))
        row["n"] = len(seeds)
        row["repeats"] = len(done) - len(seeds)
        row["not_counted"] = len(runs) - len(done)
        row["seeds"] = " ".join(seeds)
        for model in MODELS:
            scores = _by_seed(done, lambda r, model=model: r.value(model, column))
            row[f"{model}_mean"] = statistics.fmean(scores) if scores else math.nan
            row[f"{model}_std"] = _std(scores)
        differences = _by_seed(done, lambda r: r.value("distilled", column) - r.value("baseline", column))
        mean, low, high = mean_ci(differences) if differences else (math.nan, math.nan, math.nan)
        row.update(improvement_mean=mean, improvement_std=_std(differences), improvement_ci_low=low, improvement_ci_high=high)
        row["gap_mean"] = row["teacher_mean"] - row["distilled_mean"]
        rows.append(row)
    return rows


def config_columns(comparison: Comparison) -> list[str]:
    keys = [k for k in comparison.varying if k != SEED_KEY]
    per_model = [f"{model}_{stat}" for model in MODELS for stat in ("mean", "std")]
    return [*keys, "n", "repeats", *per_model, "improvement_mean", "improvement_std", "improvement_ci_low", "improvement_ci_high", "gap_mean", "not_counted", "seeds"]


def has_seed_groups(comparison: Comparison) -> bool:
    """Whether some runs differ only in their seed, or repeat one: then the grouped table shows."""
    keys = [k for k in comparison.varying if k != SEED_KEY]
    seen: set[tuple] = set()
    for run in comparison.runs:
        if run.counted:
            group = tuple(run.settings.get(k, "") for k in keys)
            if group in seen:
                return True
            seen.add(group)
    return False


SORT_METRICS = ("teacher", "distilled", "baseline", "improvement", "gap")


def sort_rows(rows: list[dict], comparison: Comparison, key: Optional[str]) -> list[dict]:
    """Sort by a setting (ascending, numbers as numbers) or by a metric (best first). Runs that
    did not complete go last either way."""
    if key is None:
        return sorted(rows, key=lambda r: (r["status"] != "completed", [_numeric_key(r[k]) for k in comparison.varying]))
    if key in comparison.varying or key == "status":
        return sorted(rows, key=lambda r: (r["status"] != "completed", _numeric_key(str(r[key]))))
    if key not in SORT_METRICS:
        raise CompareError(f"cannot sort by {key!r}; choose from {', '.join([*comparison.varying, *SORT_METRICS, 'status'])}")
    column = key if key in ("improvement", "gap") else f"{key}_{comparison.metric.column}"
    better_first = -1.0 if comparison.metric.higher_is_better != (key == "gap") else 1.0

    def order(row: dict) -> tuple:
        value = row[column]
        return (math.isnan(value), better_first * value if not math.isnan(value) else 0.0)

    return sorted(rows, key=order)


def _metric_text(value: float, metric: Metric, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return ""
    if metric.percent:
        return f"{100 * value:+.1f}" if signed else f"{100 * value:.2f}%"
    return short_number(value, signed)


def _improvement_header(metric: Metric) -> str:
    """The distilled − baseline column's title: an improvement where higher is better; where
    lower is (test NLL), a positive value is worse, and the title says so."""
    if not metric.higher_is_better:
        return "distilled − baseline (lower is better)"
    return "improvement (pts)" if metric.percent else "improvement"


def _display_runs(rows: list[dict], comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    metric, column = comparison.metric, comparison.metric.column
    unit = " (pts)" if metric.percent else ""
    show_status = any(r["status"] != "completed" for r in rows)
    gap = f"gap{unit}" if metric.higher_is_better else "teacher − distilled"  # where lower is better, negative: the teacher's is lower
    header = [*comparison.varying, "teacher", "distilled", "baseline", _improvement_header(metric), gap] + (["status"] if show_status else [])
    body = []
    for row in rows:
        cells = [row[k] for k in comparison.varying]
        cells += [_metric_text(row[f"{m}_{column}"], metric) for m in MODELS]
        cells += [_metric_text(row["improvement"], metric, True), _metric_text(row["gap"], metric, True)]
        body.append(cells + ([row["status"]] if show_status else []))
    return header, body


def _display_configs(rows: list[dict], comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    metric = comparison.metric
    keys = [k for k in comparison.varying if k != SEED_KEY]
    scale = 100.0 if metric.percent else 1.0
    digits = 1 if metric.percent else 4

    def mean_std(mean: float, std: float) -> str:
        if math.isnan(mean):
            return ""
        return _metric_text(mean, metric) + ("" if math.isnan(std) else f" ± {scale * std:.{digits}f}")

    header = [*keys, "n", "teacher", "distilled", "baseline", _improvement_header(metric), "95% CI"]
    body = []
    for row in rows:
        notes = [f"+{row['repeats']} repeat{'s' if row['repeats'] > 1 else ''} of a seed" if row["repeats"] else "", f"+{row['not_counted']} not counted" if row["not_counted"] else ""]
        cells = [row[k] for k in keys] + [str(row["n"]) + "".join(f" ({note})" for note in notes if note)]
        cells += [mean_std(row[f"{m}_mean"], row[f"{m}_std"]) for m in MODELS]
        cells.append(_metric_text(row["improvement_mean"], metric, True))
        low, high = row["improvement_ci_low"], row["improvement_ci_high"]
        cells.append("" if math.isnan(low) else f"[{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]")
        body.append(cells)
    return header, body


def _markdown(header: list[str], body: list[list[str]], n_settings: int) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---" if index < n_settings else "---:" for index in range(len(header))]
    return "\n".join([line(header), line(align), *(line(cells) for cells in body)]) + "\n"


def _rich_table(title: str, header: list[str], body: list[list[str]], n_settings: int):
    from rich.table import Table

    table = Table(title=title)
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index < n_settings else "right", overflow="fold")
    for cells in body:
        table.add_row(*cells)
    return table


# --------------------------------------------------------------------------- heatmap


GRID_KEYS = ("loss.alpha", "loss.temperature")


def heatmap_grids(comparison: Comparison) -> list[tuple[str, dict[tuple[float, float], list[float]]]]:
    """Improvement per (alpha, temperature), one grid per set-up: runs that differ in other
    settings (the epochs, the dataset, ...) are never pooled into one cell. Each grid is (the
    set-up's settings as text, {(alpha, T): one improvement per distinct seed}); grids where
    alpha and T do not both vary, or do not form a grid, are left out."""
    column = comparison.metric.column
    others = [k for k in comparison.varying if k not in (*GRID_KEYS, SEED_KEY)]
    setups: dict[tuple, list[Run]] = {}
    for run in comparison.runs:
        if run.counted:
            setups.setdefault(tuple(run.settings.get(k, "") for k in others), []).append(run)
    grids = []
    for setup, runs in setups.items():
        by_cell: dict[tuple[float, float], list[Run]] = {}
        for run in runs:
            by_cell.setdefault((_float(run.summary_field("alpha")), _float(run.summary_field("temperature"))), []).append(run)
        alphas, temperatures = {a for a, _ in by_cell}, {t for _, t in by_cell}
        if len(alphas) < 2 or len(temperatures) < 2 or any(math.isnan(v) for v in alphas | temperatures):
            continue
        if 2 * len(by_cell) < len(alphas) * len(temperatures):  # scattered points (an Optuna search), not a grid
            continue
        cells = {cell: _by_seed(members, lambda r: r.value("distilled", column) - r.value("baseline", column)) for cell, members in by_cell.items()}
        grids.append((", ".join(f"{k}={v}" for k, v in zip(others, setup)), cells))
    return grids


# --------------------------------------------------------------------------- the command


def write_outputs(comparison: Comparison, out_dir: Path, rows: list[dict], groups: Optional[list[dict]], plot: bool = True) -> list[Path]:
    """comparison.csv, comparison_by_config.csv (seeds vary or repeat), heatmap.png (alpha × T
    varies; heatmap-1.png, heatmap-2.png, ... for several set-ups), else forest.png (each
    configuration's paired improvement with its interval, when there are several)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / COMPARISON_FILE]
    write_csv_atomic(written[0], rows, run_columns(comparison))
    if groups is not None:
        written.append(out_dir / BY_CONFIG_FILE)
        write_csv_atomic(written[-1], groups, config_columns(comparison))
    grids = heatmap_grids(comparison) if plot else []
    for index, (setup, cells) in enumerate(grids, start=1):
        from kdrun.plots import draw_heatmap

        name = HEATMAP_FILE if len(grids) == 1 else HEATMAP_FILE.replace(".png", f"-{index}.png")
        written.append(out_dir / name)
        draw_heatmap(written[-1], cells, comparison.metric, setup)
    configurations = (groups if groups is not None else config_rows(comparison)) if plot and not grids else []
    configurations = [c for c in configurations if not math.isnan(c["improvement_mean"])]  # with no baseline: nothing to draw
    if len(configurations) >= 2:  # not an alpha x T grid: each configuration's improvement, a row each
        from kdrun.plots import draw_forest

        written.append(out_dir / FOREST_FILE)
        keys = [k for k in comparison.varying if k != SEED_KEY]
        draw_forest(written[-1], configurations, keys, comparison.metric)
    return written


def render(comparison: Comparison, rows: list[dict], groups: Optional[list[dict]], fmt: str, console=None) -> None:
    """Print the per-run table (and the seed-grouped one) as a rich table, CSV or markdown."""
    if fmt == "csv":
        sys.stdout.write(csv_text(rows, run_columns(comparison)))
        return
    title = f"{comparison.metric.title}: {len(rows)} runs"
    tables = [(title, *_display_runs(rows, comparison), len(comparison.varying))]
    if groups is not None:
        keys = [k for k in comparison.varying if k != SEED_KEY]
        group_title = f"{comparison.metric.title} over seeds: mean ± std; paired improvement with 95% t-interval"
        tables.append((group_title, *_display_configs(groups, comparison), len(keys)))
    if fmt == "markdown":
        sys.stdout.write("\n".join(f"**{t}**\n\n{_markdown(h, b, n)}" for t, h, b, n in tables))
        return
    if console is None:
        from kdrun.console import make_console

        console = make_console(min_width=120)
    for table in tables:
        console.print(_rich_table(*table))


def closing_lines(comparison: Comparison) -> list[str]:
    """Malformed runs by name, then one line counting what was left out of the averages."""
    lines = [f"skipped {run.path}: {run.message}" for run in comparison.skipped]
    for run in comparison.runs:
        if not run.counted:
            lines.append(f"not counted ({run.status}) {run.path}" + (f": {run.message}" if run.message else ""))
    counts: dict[str, int] = {}
    for run in [*comparison.runs, *comparison.skipped]:
        if not run.counted:
            counts[run.status] = counts.get(run.status, 0) + 1
    if counts:
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        lines.append(f"{sum(r.counted for r in comparison.runs)} completed runs compared; left out: {summary}")
    return lines


def compare(dirs: Sequence[Path], out: Optional[Path] = None, metric: str = "test_acc", sort: Optional[str] = None, fmt: str = "table", plot: bool = True, console=None) -> Comparison:
    """The whole command: collect, print, and write files into ``out`` (none without it: viewing
    never overwrites a sweep's own files). Raises CompareError on bad input."""
    comparison = collect([Path(d) for d in dirs], metric)
    rows = sort_rows(run_rows(comparison), comparison, sort)
    groups = config_rows(comparison) if has_seed_groups(comparison) else None
    if groups is not None and sort is not None:
        groups = _sort_groups(groups, comparison, sort)
    if out is not None:  # before anything is printed: a folder that cannot be used is the one message
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            reason = "a file, not a folder" if Path(out).is_file() else error.strerror or str(error)
            raise CompareError(f"--out {out} cannot be used: {reason}") from None
    render(comparison, rows, groups, fmt, console)
    for line in closing_lines(comparison):
        print(line, file=sys.stderr)
    if out is None:
        print("(kdrun compare ... --out DIR writes comparison.csv and the figures)", file=sys.stderr)
        return comparison
    written = write_outputs(comparison, Path(out), rows, groups, plot)
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return comparison


def _sort_groups(groups: list[dict], comparison: Comparison, key: str) -> list[dict]:
    if key in comparison.varying and key != SEED_KEY:
        return sorted(groups, key=lambda g: _numeric_key(g[key]))
    if key in SORT_METRICS:
        column = "improvement_mean" if key == "improvement" else "gap_mean" if key == "gap" else f"{key}_mean"
        sign = -1.0 if comparison.metric.higher_is_better != (key == "gap") else 1.0
        return sorted(groups, key=lambda g: (math.isnan(g[column]), sign * g[column] if not math.isnan(g[column]) else 0.0))
    return groups


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdrun compare",
        description="Tabulate every run below DIR (single runs and sweeps, nested): the settings that vary, "
        "teacher / distilled / baseline scores, improvement (distilled - baseline) and gap (teacher - distilled). "
        "Runs differing only in trainer.seed are also grouped over their distinct seeds (mean ± std, paired 95% "
        "t-interval); repeats of a seed count once.",
        epilog="With --out DIR it writes comparison.csv, comparison_by_config.csv (when seeds vary) and figures there: "
        "heatmap.png (when alpha and temperature vary; one per set-up), else forest.png (each configuration's paired "
        "improvement with its interval, when there are several); without, it only prints. A sweep writes "
        "its own into its folder when it ends. Example: kdrun compare outputs/multirun --out report/",
    )
    parser.add_argument("dirs", nargs="*", type=Path, default=[Path("outputs")], metavar="DIR", help="directories holding runs or sweeps (default: outputs)")
    parser.add_argument("--metric", choices=list(METRICS), default="test_acc", help="summary.csv column to compare (default: test_acc)")
    parser.add_argument("--sort", metavar="KEY", help="a varying setting (e.g. loss.temperature; ascending) or teacher|distilled|baseline|improvement|gap (best first)")
    parser.add_argument("--format", dest="fmt", choices=("table", "csv", "markdown"), default="table", help="how to print (default: table)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write comparison.csv and the figures into DIR")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="with --out: draw no figures (heatmap.png, forest.png), only the CSVs")
    return parser


def main(argv: list[str]) -> int:
    """``kdrun compare``: 0 when done; 1 when no run completed (nothing was compared: a script
    waiting on results can tell); 2, with one line on stderr, on bad input."""
    args = build_parser().parse_args(argv)
    try:
        comparison = compare(args.dirs, out=args.out, metric=args.metric, sort=args.sort, fmt=args.fmt, plot=args.plot)
    except CompareError as error:
        print(f"kdrun compare: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"kdrun compare: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK if any(run.counted for run in comparison.runs) else EXIT_FAILED
