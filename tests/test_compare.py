"""Tests for ``kdrun compare`` on run directories fabricated here (summary.csv, status.json and
.hydra/ written by hand), so that every expected number is known in advance. The real sweeps are
in test_sweeps.py."""

from __future__ import annotations

import csv
import json
import math
import statistics
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdrun import compare, stats
from kdrun.run_files import SUMMARY_COLUMNS, write_csv_atomic


def make_run(
    directory: Path,
    *,
    alpha: float = 0.7,
    temperature: float = 3.0,
    seed: int = 42,
    teacher: float = 0.95,
    distilled: float = 0.90,
    baseline: float = 0.88,
    status: str = "completed",
    overrides: list[str] | None = None,
    summary: bool = True,
) -> Path:
    """A run directory as ``kdrun train`` leaves it: status.json, summary.csv, .hydra/."""
    directory.mkdir(parents=True)
    hydra = directory / ".hydra"
    hydra.mkdir()
    if overrides is None:
        overrides = [f"loss.alpha={alpha}", f"loss.temperature={temperature}", f"trainer.seed={seed}", "cache.dir=/tmp/c"]
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {
        "dataset": {"name": "synthetic", "n_samples": 500},
        "loss": {"alpha": float(alpha), "temperature": float(temperature)},
        "trainer": {"epochs": 20, "seed": seed, "threads": None},
        "cache": {"enabled": True, "dir": "/tmp/c"},
        "plots": True,
    }
    (hydra / "config.yaml").write_text(yaml.safe_dump(config))
    (directory / "status.json").write_text(json.dumps({"status": status, "message": "boom" if status == "failed" else ""}))
    if summary:
        rows = [
            {"model": model, "test_acc": acc, "val_acc": acc, "test_nll": 1 - acc, "agreement": 1.0, "dataset": "synthetic", "alpha": alpha, "temperature": temperature, "seed": seed,
             "source": "not_trained" if math.isnan(acc) else "trained"}
            for model, acc in (("teacher", teacher), ("distilled", distilled), ("baseline", baseline))
        ]
        write_csv_atomic(directory / "summary.csv", rows, SUMMARY_COLUMNS)
    return directory


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdrun.cli", "compare", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- the t-distribution


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)])
def test_t_critical_matches_tables(df: int, expected: float) -> None:
    assert stats.t_critical(df) == pytest.approx(expected, abs=5e-4)


def test_t_critical_tends_to_normal_and_other_levels() -> None:
    assert stats.t_critical(100_000) == pytest.approx(1.95996, abs=1e-4)
    assert stats.t_critical(10, 0.99) == pytest.approx(3.169, abs=5e-4)
    assert stats.t_two_sided_p(stats.t_critical(7), 7) == pytest.approx(0.05, abs=1e-12)


def test_mean_ci_formula() -> None:
    mean, low, high = stats.mean_ci([0.01, 0.02, 0.03])
    half = 4.302652729911275 * statistics.stdev([0.01, 0.02, 0.03]) / math.sqrt(3)
    assert mean == pytest.approx(0.02)
    assert (low, high) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-12)
    assert math.isnan(stats.mean_ci([0.5])[1])


# --------------------------------------------------------------------------- the table and its files


def test_grid_table_csv_and_heatmap(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    improvements = {}
    for number, (alpha, temperature) in enumerate((a, t) for a in (0.1, 0.5, 0.9) for t in (1, 4)):
        improvements[(alpha, temperature)] = 0.01 * number
        make_run(sweep / f"{number}_alpha={alpha},T={temperature}", alpha=alpha, temperature=temperature, distilled=0.80 + 0.01 * number, baseline=0.80)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")

    result = compare.compare([sweep], fmt="table", out=sweep)

    assert result.varying == ["loss.alpha", "loss.temperature"]  # not trainer.seed, not cache.dir
    rows = read_csv(sweep / "comparison.csv")
    assert len(rows) == 6
    for row in rows:
        expected = improvements[(float(row["loss.alpha"]), float(row["loss.temperature"]))]
        assert float(row["improvement"]) == pytest.approx(expected)
        assert float(row["gap"]) == pytest.approx(0.95 - float(row["distilled_test_acc"]))
    assert (sweep / "heatmap.png").stat().st_size > 1000
    assert not (sweep / "comparison_by_config.csv").exists()  # one seed: nothing to group
    out = capsys.readouterr().out
    assert "loss.alpha" in out and "+5.0" in out and "95.00%" in out


def test_seeds_grouped_with_paired_confidence_interval(tmp_path: Path) -> None:
    for temperature, gains in ((1, (0.01, 0.02, 0.03)), (4, (0.05, 0.05, 0.08))):
        for seed, gain in enumerate(gains):
            make_run(tmp_path / "sweep" / f"T{temperature}_s{seed}", temperature=temperature, seed=seed, baseline=0.80 + 0.01 * seed, distilled=0.80 + 0.01 * seed + gain)
    make_run(tmp_path / "sweep" / "T4_s9", temperature=4, seed=9, status="failed", summary=False)

    compare.compare([tmp_path / "sweep"], fmt="csv", out=tmp_path / "sweep")

    groups = {row["loss.temperature"]: row for row in read_csv(tmp_path / "sweep" / "comparison_by_config.csv")}
    assert set(groups) == {"1", "4"}
    one, four = groups["1"], groups["4"]
    half = stats.t_critical(2) * 0.01 / math.sqrt(3)  # stdev of 0.01, 0.02, 0.03 is 0.01
    assert one["n"] == "3" and one["not_counted"] == "0"
    assert float(one["improvement_mean"]) == pytest.approx(0.02)
    assert float(one["improvement_ci_low"]) == pytest.approx(0.02 - half)
    assert float(one["improvement_ci_high"]) == pytest.approx(0.02 + half)
    assert float(one["baseline_mean"]) == pytest.approx(0.81)
    assert float(one["baseline_std"]) == pytest.approx(0.01)
    assert four["n"] == "3" and four["not_counted"] == "1" and four["repeats"] == "0"  # the failed seed is listed, not averaged
    assert float(four["improvement_mean"]) == pytest.approx(0.06)
    assert float(four["improvement_ci_low"]) > float(one["improvement_ci_high"]) - 0.05
    runs = read_csv(tmp_path / "sweep" / "comparison.csv")
    assert [r["status"] for r in runs].count("failed") == 1 and len(runs) == 7
    assert not (tmp_path / "sweep" / "heatmap.png").exists()  # alpha does not vary


def test_a_setting_a_preset_interpolates_reads_as_its_value(tmp_path: Path) -> None:
    """loss=dkd's beta is ${model.recipe_dkd_beta} in config.yaml: compare showed that text, and
    kept a default run (8) apart from a loss.beta=8 one."""
    interpolated = {"model": {"recipe_dkd_beta": 8.0}, "loss": {"beta": "${model.recipe_dkd_beta}"}, "trainer": {"seed": 0}}
    given = {"model": {"recipe_dkd_beta": 8.0}, "loss": {"beta": 8.0}, "trainer": {"seed": 1}}
    assert compare.read_settings(tmp_path, ["loss.beta"], interpolated) == compare.read_settings(tmp_path, ["loss.beta"], given) == {"loss.beta": "8"}
    chained = {"loss": {"beta": "${model.x}"}, "model": {"x": "${trainer.lr}"}, "trainer": {"lr": 0.5}}
    assert compare.read_settings(tmp_path, ["loss.beta"], chained) == {"loss.beta": "0.5"}


def test_runs_that_loaded_different_teacher_files_from_one_path_are_compared_apart(tmp_path: Path) -> None:
    """The same model.teacher.checkpoint path, its file replaced by another teacher between two
    sweeps: pooled, their seeds would make one confidence interval of two experiments."""
    overrides = ["model.teacher.checkpoint=/w/teacher.pt", "loss.temperature=4"]
    for sweep, teacher in (("first", "a" * 64), ("second", "b" * 64)):
        for seed in range(2):
            run = make_run(tmp_path / sweep / f"s{seed}", seed=seed, overrides=[*overrides, f"trainer.seed={seed}"])
            (run / "status.json").write_text(json.dumps({"status": "completed", "teacher_sha256": teacher}))

    comparison = compare.collect([tmp_path])
    assert set(comparison.varying) == {compare.TEACHER_FILE_KEY, "trainer.seed"}  # not the path: it is the same
    rows = compare.config_rows(comparison)
    assert sorted((row[compare.TEACHER_FILE_KEY], row["n"]) for row in rows) == [("a" * 12, 2), ("b" * 12, 2)]
    one_file = compare.collect([tmp_path / "first"])
    assert compare.TEACHER_FILE_KEY not in one_file.varying and len(compare.config_rows(one_file)) == 1
    # a run of an older kdrun, which did not record the file's digest, pools with the one file's runs
    older = make_run(tmp_path / "first" / "s2", seed=2, overrides=[*overrides, "trainer.seed=2"])
    (older / "status.json").write_text(json.dumps({"status": "completed"}))
    with_older = compare.collect([tmp_path / "first"])
    assert compare.TEACHER_FILE_KEY not in with_older.varying and [row["n"] for row in compare.config_rows(with_older)] == [3]


def test_nothing_to_compare_exits_1(tmp_path: Path) -> None:
    """Runs found, none completed (all failed, or still running): the table says so, and a script
    waiting on results can tell from the exit code."""
    make_run(tmp_path / "sweep" / "a", status="failed", summary=False)
    make_run(tmp_path / "sweep" / "b", status="running", summary=False)
    result = run_cli(str(tmp_path / "sweep"))
    assert result.returncode == 1 and "0 completed runs compared" in result.stderr and "Traceback" not in result.stderr
    make_run(tmp_path / "sweep" / "c")
    assert run_cli(str(tmp_path / "sweep")).returncode == 0


def test_failed_and_malformed_runs_named_and_counted(tmp_path: Path) -> None:
    make_run(tmp_path / "a" / "0", alpha=0.1)
    make_run(tmp_path / "a" / "1", alpha=0.5, status="interrupted")
    make_run(tmp_path / "a" / "2", alpha=0.9, summary=False)  # completed, but no summary.csv
    partial = make_run(tmp_path / "a" / "3", alpha=0.3)
    (partial / "summary.csv").write_text("model,test_acc\nteacher,0.9\ndistilled,0.8\n")  # no baseline row
    garbled = make_run(tmp_path / "a" / "4", alpha=0.4)
    (garbled / "summary.csv").write_text("model,test_acc\nteacher,abc\ndistilled,0.8\nbaseline,0.7\n")
    unreadable = make_run(tmp_path / "a" / "5", alpha=0.6)  # its settings cannot be told: never pooled with another's
    (unreadable / ".hydra" / "config.yaml").write_text("loss: {alpha: [unclosed\n")

    result = run_cli(str(tmp_path / "a"), "--format", "csv")

    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert {r["loss.alpha"]: r["status"] for r in rows} == {"0.1": "completed", "0.5": "interrupted"}
    assert rows[1]["distilled_test_acc"] == ""  # never a number for a job that did not finish
    reasons = (("2", "no summary.csv"), ("3", "no baseline row"), ("4", "teacher test_acc is not a number"), ("5", ".hydra/config.yaml is missing or not"))
    for name, reason in reasons:
        assert f"skipped {tmp_path / 'a' / name}: " in result.stderr and reason in result.stderr
    assert "1 completed runs compared; left out: 1 interrupted, 4 malformed" in result.stderr
    assert "Traceback" not in result.stderr


def test_nested_dirs_single_runs_and_out_dir(tmp_path: Path) -> None:
    make_run(tmp_path / "outputs" / "2024-01-01" / "10-00-00", overrides=["trainer.epochs=5"])
    make_run(tmp_path / "outputs" / "multirun" / "x" / "0", overrides=["loss.temperature=8"], temperature=8)
    make_run(tmp_path / "elsewhere" / "run", overrides=[])

    result = run_cli(str(tmp_path / "outputs"), str(tmp_path / "elsewhere"), "--out", str(tmp_path / "report"), "--format", "markdown")

    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| loss.temperature | teacher |")  # trainer.epochs is 20 in all three configs
    assert lines[1].startswith("| --- | ---: |")
    assert len(lines) == 2 + 3 + 2 + 2  # and the grouped table: the two default runs are repeats of one seed
    assert "| 3 | 1 (+1 repeat of a seed) |" in lines[-1] or "1 (+1 repeat of a seed)" in "".join(lines[-2:])
    assert len(read_csv(tmp_path / "report" / "comparison.csv")) == 3


def test_an_out_folder_it_cannot_use_is_one_message_and_nothing_printed(tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "a")
    (tmp_path / "a_file").write_text("")
    result = run_cli(str(tmp_path / "runs"), "--out", str(tmp_path / "a_file"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"kdrun compare: error: --out {tmp_path / 'a_file'} cannot be used: a file, not a folder"]


def test_runs_that_differ_in_a_setting_no_override_names_are_not_pooled_as_seeds(tmp_path: Path) -> None:
    """The same command with another --config-dir: trainer.epochs differs only in config.yaml.
    The column appears, and each setting's seeds form their own group."""
    for epochs, seed, distilled in ((20, 0, 0.95), (20, 1, 0.94), (5, 0, 0.71), (5, 1, 0.70)):
        run = make_run(tmp_path / f"e{epochs}s{seed}", seed=seed, distilled=distilled, overrides=[f"trainer.seed={seed}"])
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        config["trainer"]["epochs"] = epochs
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    comparison = compare.collect([tmp_path])
    assert comparison.varying == ["trainer.seed", "trainer.epochs"]
    groups = {g["trainer.epochs"]: g for g in compare.config_rows(comparison)}
    assert {k: (g["n"], round(g["improvement_mean"], 3)) for k, g in groups.items()} == {"20": (2, 0.065), "5": (2, -0.175)}


def test_values_apart_beyond_six_digits_are_apart(tmp_path: Path) -> None:
    make_run(tmp_path / "a", alpha=0.1234567, distilled=0.95)
    make_run(tmp_path / "b", alpha=0.1234568, distilled=0.70)
    assert sorted(r.settings["loss.alpha"] for r in compare.collect([tmp_path]).runs) == ["0.1234567", "0.1234568"]


def test_sort_and_metric(tmp_path: Path) -> None:
    for alpha, distilled in ((0.1, 0.85), (0.5, 0.95), (0.9, 0.90)):
        make_run(tmp_path / f"a{alpha}", alpha=alpha, distilled=distilled)
    result = run_cli(str(tmp_path), "--sort", "improvement", "--format", "csv")
    assert [r["loss.alpha"] for r in csv.DictReader(result.stdout.splitlines())] == ["0.5", "0.9", "0.1"]
    result = run_cli(str(tmp_path), "--metric", "test_nll", "--sort", "distilled", "--format", "csv")
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert [r["loss.alpha"] for r in rows] == ["0.5", "0.9", "0.1"]  # lowest NLL first
    assert float(rows[0]["distilled_test_nll"]) == pytest.approx(0.05)
    wide = {**os.environ, "COLUMNS": "200"}  # the header on one line
    table = subprocess.run([sys.executable, "-m", "kdrun.cli", "compare", str(tmp_path), "--metric", "test_nll"], capture_output=True, text=True, env=wide).stdout
    assert "distilled − baseline (lower is better)" in table and "improvement" not in table  # a positive NLL difference is worse
    assert "teacher − distilled" in table and "gap" not in table  # negative: the teacher's NLL is lower
    result = run_cli(str(tmp_path), "--sort", "nonsense")
    assert result.returncode == 2 and result.stderr.startswith("kdrun compare: error: cannot sort by 'nonsense'")


def test_runs_without_a_baseline_draw_no_empty_forest(tmp_path: Path) -> None:
    """dataset.transfer_labels=false trains no baseline: no improvement to draw, and no figure."""
    for alpha in (0.1, 0.5):
        make_run(tmp_path / "runs" / f"a{alpha}", alpha=alpha, baseline=math.nan)
    result = run_cli(str(tmp_path / "runs"), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "report" / "forest.png").exists() and "forest.png" not in result.stdout
    assert (tmp_path / "report" / "comparison.csv").is_file()


@pytest.mark.parametrize("make_input, message", [
    (lambda p: p / "missing", "no such directory"),
    (lambda p: p, "no runs"),
])  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, make_input, message: str) -> None:
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    result = run_cli(str(make_input(tmp_path)))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"kdrun compare: error: {message}")


def test_a_file_given_as_dir_is_said_to_be_one(tmp_path: Path) -> None:
    (tmp_path / "summary.csv").write_text("")
    result = run_cli(str(tmp_path / "summary.csv"))
    assert result.returncode == 2 and result.stderr == f"kdrun compare: error: {tmp_path / 'summary.csv'} is a file, not a directory of runs\n"


def test_repeats_of_a_seed_count_once(tmp_path: Path) -> None:
    """Six runs of the same seed are one sample, not six: no interval from them, and the table
    says they are repeats; a second seed makes n = 2."""
    for repeat in range(6):
        make_run(tmp_path / "runs" / f"again{repeat}", seed=0, overrides=[], distilled=0.90, baseline=0.88)
    comparison = compare.compare([tmp_path / "runs"], fmt="csv")
    (group,) = compare.config_rows(comparison)
    assert (group["n"], group["repeats"]) == (1, 5) and math.isnan(group["improvement_ci_low"])
    make_run(tmp_path / "runs" / "other", seed=1, overrides=["trainer.seed=1"], distilled=0.92, baseline=0.88)
    comparison = compare.collect([tmp_path / "runs"])
    (group,) = compare.config_rows(comparison)
    assert (group["n"], group["repeats"]) == (2, 5)
    assert group["improvement_mean"] == pytest.approx((0.02 + 0.04) / 2)  # per seed, not per run
    result = run_cli(str(tmp_path / "runs"), "--format", "markdown")
    assert "| 2 (+5 repeats of a seed) |" in result.stdout


def test_a_heatmap_never_pools_different_set_ups(tmp_path: Path) -> None:
    """A 3-epoch grid and a 20-epoch grid over the same alpha x T: two heatmaps, each its own
    set-up, never one cell averaging both."""
    for epochs, gain in ((3, 0.10), (20, -0.10)):
        for alpha in (0.1, 0.9):
            for temperature in (1, 4):
                overrides = [f"loss.alpha={alpha}", f"loss.temperature={temperature}", f"trainer.epochs={epochs}"]
                make_run(tmp_path / f"e{epochs}" / f"{alpha}_{temperature}", alpha=alpha, temperature=temperature, overrides=overrides, distilled=0.8 + gain, baseline=0.8)
    for run in (tmp_path / "e3").iterdir():  # the config records the epochs, as a real run's does
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        config["trainer"]["epochs"] = 3
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    comparison = compare.compare([tmp_path / "e3", tmp_path / "e20"], out=tmp_path / "report")
    grids = compare.heatmap_grids(comparison)
    assert sorted(setup for setup, _ in grids) == ["trainer.epochs=20", "trainer.epochs=3"]
    for setup, cells in grids:
        expected = 0.10 if setup.endswith("=3") else -0.10
        assert all(values == [pytest.approx(expected)] for values in cells.values())
    assert (tmp_path / "report" / "heatmap-1.png").is_file() and (tmp_path / "report" / "heatmap-2.png").is_file()


def test_viewing_never_overwrites_a_sweeps_files_and_failed_runs_add_no_columns(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for alpha in (0.1, 0.9):
        make_run(sweep / f"a{alpha}", alpha=alpha, overrides=[f"loss.alpha={alpha}", "dataset=synthetic"])
    make_run(sweep / "typo", status="failed", summary=False, overrides=["loss.alpah=1"])
    compare.compare([sweep], out=sweep)
    before = (sweep / "comparison.csv").read_bytes()
    result = run_cli(str(sweep), "--metric", "val_acc", "--format", "markdown")
    assert result.returncode == 0 and (sweep / "comparison.csv").read_bytes() == before
    assert not list(sweep.glob("*val_acc*"))
    header = next(csv.reader(before.decode().splitlines()))
    assert "loss.alpah" not in header and len(header) == len(set(header)), header


def test_comparison_csv_shows_each_setting_once(tmp_path: Path) -> None:
    """summary.csv's alpha, temperature and seed copy loss.alpha, loss.temperature and
    trainer.seed: comparison.csv shows the varying setting's column and drops the copy (it used
    to show both, under names that differ, which a check for repeated names cannot see)."""
    sweep = tmp_path / "sweep"
    for number, (alpha, temperature, seed) in enumerate((a, t, s) for a in (0.1, 0.9) for t in (1, 4) for s in (0, 1)):
        make_run(sweep / f"{number}_run", alpha=alpha, temperature=temperature, seed=seed)
    compare.compare([sweep], fmt="csv", out=sweep)
    header = next(csv.reader((sweep / "comparison.csv").read_text().splitlines()))
    assert {"loss.alpha", "loss.temperature", "trainer.seed", "dataset"} <= set(header)
    leaves = [column.rsplit(".", 1)[-1] for column in header]  # loss.alpha and alpha: one setting
    assert len(leaves) == len(set(leaves)), header
    assert {row["trainer.seed"] for row in read_csv(sweep / "comparison.csv")} == {"0", "1"}

    compare.compare([sweep / "0_run", sweep / "2_run"], fmt="csv", out=tmp_path / "one_seed")  # only T varies
    header = next(csv.reader((tmp_path / "one_seed" / "comparison.csv").read_text().splitlines()))
    assert "loss.temperature" in header and "temperature" not in header
    assert {"alpha", "seed", "dataset"} <= set(header) and "trainer.seed" not in header  # the copies of what does not vary


def test_compare_looks_in_outputs_by_default_and_its_help_reads_plainly(tmp_path: Path) -> None:
    make_run(tmp_path / "outputs" / "2024-01-01" / "10-00-00")
    result = subprocess.run([sys.executable, "-m", "kdrun", "compare"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "95.00%" in result.stdout, result.stderr
    usage = subprocess.run([sys.executable, "-m", "kdrun", "compare", "--help"], capture_output=True, text=True, timeout=60)
    assert "95%" in usage.stdout and "%%" not in usage.stdout
    no_plot = usage.stdout.split("\n  --no-plot", 1)[1].split("\n\n", 1)[0]  # the option's help, not the epilog
    assert "heatmap.png" in no_plot and "forest.png" in no_plot  # it draws neither figure
    assert "forest.png" in usage.stdout.split("\n\n")[-1]  # the epilog lists what --out writes


# --------------------------------------------------------------------------- speed, imports


def test_no_torch_import() -> None:
    code = "import kdrun.compare, kdrun.app, sys; assert 'torch' not in sys.modules and 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_hundred_runs_under_a_second(tmp_path: Path, capsys) -> None:
    """5 alphas × 4 temperatures × 5 seeds. Finding, reading, both tables and both CSVs: < 1 s.
    The heatmap is matplotlib's time (~0.4 s once warm, plus ~0.5 s import and font load per
    process); it gets a looser bound."""
    number = 0
    for alpha in (0.1, 0.3, 0.5, 0.7, 0.9):
        for temperature in (1, 2, 4, 8):
            for seed in range(5):
                make_run(tmp_path / "sweep" / f"{number}_run", alpha=alpha, temperature=temperature, seed=seed, distilled=0.8 + 0.01 * seed)
                number += 1

    start = time.perf_counter()
    result = compare.compare([tmp_path / "sweep"], plot=False, out=tmp_path / "sweep")
    seconds = time.perf_counter() - start
    assert seconds < 1.0, f"compare took {seconds:.2f} s for 100 runs"
    assert len(result.runs) == 100 and len(read_csv(tmp_path / "sweep" / "comparison_by_config.csv")) == 20

    compare.compare([tmp_path / "sweep"], fmt="csv", out=tmp_path / "sweep")  # warm matplotlib up: import, fonts
    start = time.perf_counter()
    compare.compare([tmp_path / "sweep"], fmt="csv", out=tmp_path / "sweep")
    assert time.perf_counter() - start < 3.0
    assert (tmp_path / "sweep" / "heatmap.png").stat().st_size > 1000
