"""kdrun train end to end: the CLI as a user runs it, the notebook's defaults, and the guarantees
that make the comparison fair (held-out split, identical student start, same batches)."""

from __future__ import annotations

import copy
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdrun.data import stratified_split
from kdrun.data.synthetic import make_synthetic
from kdrun.models import MLP, count_parameters
from kdrun.run_files import METRICS_COLUMNS, SUMMARY_COLUMNS

TINY = ["dataset.n_samples=120", "model.teacher.hidden=[16]", "model.student.hidden=[8]", "trainer.epochs=2"]


def kdrun(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdrun", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )  # fmt: skip


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real run with plots, shared by the tests that only read its outputs."""
    root = tmp_path_factory.mktemp("run")
    result = kdrun("train", *TINY, f"hydra.run.dir={root}/run", f"cache.dir={root}/cache", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "run", result


def test_run_writes_every_documented_file(default_run):
    run_dir, _ = default_run
    for name in ("metrics.csv", "summary.csv", "curves.png", "temperature.png", "teacher.pt", "distilled.pt",
                 "baseline.pt", "train.log", "status.json", ".hydra/config.yaml", ".hydra/overrides.yaml"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    for name in ("curves.png", "temperature.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_csv_has_one_row_per_model_per_epoch(default_run):
    run_dir, _ = default_run
    with open(run_dir / "metrics.csv", newline="") as handle:
        assert next(csv.reader(handle)) == [*METRICS_COLUMNS, "soft_loss", "hard_loss"]  # then kd's parts
    rows = read_csv(run_dir / "metrics.csv")
    assert [(r["model"], r["epoch"]) for r in rows] == [(m, str(e)) for m in ("teacher", "distilled", "baseline") for e in (1, 2)]
    for row in rows:
        assert 0 <= float(row["train_acc"]) <= 1 and 0 <= float(row["val_acc"]) <= 1
        assert float(row["train_loss"]) >= 0 and float(row["seconds"]) > 0
        has_parts = row["model"] == "distilled"
        assert bool(row["soft_loss"]) == has_parts and bool(row["hard_loss"]) == has_parts
    distilled = [r for r in rows if r["model"] == "distilled"]
    for row in distilled:  # total = alpha * soft + (1 - alpha) * hard, per batch and so on average
        expected = 0.7 * float(row["soft_loss"]) + 0.3 * float(row["hard_loss"])
        assert float(row["train_loss"]) == pytest.approx(expected, rel=1e-5)


def test_summary_csv_has_a_row_per_model_with_run_settings(default_run):
    run_dir, result = default_run
    with open(run_dir / "summary.csv", newline="") as handle:
        assert next(csv.reader(handle)) == SUMMARY_COLUMNS
    rows = {r["model"]: r for r in read_csv(run_dir / "summary.csv")}
    assert list(rows) == ["teacher", "distilled", "baseline"]
    n_train, n_val, n_test = (int(rows["teacher"][k]) for k in ("n_train", "n_val", "n_test"))
    assert (n_train, n_val, n_test) == (84, 18, 18)
    assert rows["teacher"]["agreement"] == "1.0"
    for row in rows.values():
        assert (row["dataset"], row["alpha"], row["temperature"], row["seed"]) == ("synthetic", "0.7", "3.0", "42")
        assert row["source"] == "trained"
        for key in ("train_acc", "val_acc", "test_acc", "agreement"):
            assert 0 <= float(row[key]) <= 1
        assert float(row["test_nll"]) > 0
    # The console shows the table and the notebook's two closing lines, computed on test data.
    improvement = (float(rows["distilled"]["test_acc"]) - float(rows["baseline"]["test_acc"])) * 100
    assert f"Distillation improvement (distilled - baseline, test accuracy): {improvement:+.1f} points" in result.stdout
    assert "Gap from teacher (teacher - distilled, test accuracy):" in result.stdout


def test_status_records_completion_and_the_sweep_objective(default_run):
    import json

    run_dir, _ = default_run
    status = json.loads((run_dir / "status.json").read_text())
    distilled = next(r for r in read_csv(run_dir / "summary.csv") if r["model"] == "distilled")
    assert status["status"] == "completed"
    assert status["objective"] == float(distilled["val_acc"])


def test_checkpoints_rebuild_the_models_from_the_file_alone(default_run):
    from kdrun.models import load

    run_dir, _ = default_run
    checkpoint = torch.load(run_dir / "distilled.pt", weights_only=True)
    assert checkpoint["model"] == {"_target_": "kdrun.models.MLP", "hidden": [8], "dropout": 0.0, "input_shape": [784], "num_classes": 10}
    assert checkpoint["config"]["loss"]["alpha"] == 0.7 and checkpoint["normalization"] is None  # synthetic: not standardised
    model = load(run_dir / "distilled.pt")
    assert isinstance(model.model, MLP) and not model.training  # in Standardized, here with mean 0 and std 1
    assert all(torch.equal(a, b) for a, b in zip(model.model.state_dict().values(), checkpoint["state_dict"].values()))
    x = torch.randn(3, 784)
    assert model(x).shape == (3, 10)


def test_synthetic_data_is_the_notebooks_bit_for_bit():
    # The notebook's cell, verbatim apart from names.
    torch.manual_seed(42)
    X = torch.randn(500, 784)
    y = torch.randint(0, 10, (500,))
    for i in range(10):
        mask = y == i
        class_signal = torch.randn(784) * 0.5
        X[mask] += class_signal
    x, labels = make_synthetic(500, 784, 10, 0.5, 42)["train"]
    assert torch.equal(x, X) and torch.equal(labels, y)


def test_default_models_have_the_notebooks_parameter_counts():
    assert count_parameters(MLP((784,), 10, [256, 256, 256])) == 335_114
    assert count_parameters(MLP((784,), 10, [64])) == 50_890


def test_stratified_split_is_disjoint_complete_proportional_and_seeded():
    labels = make_synthetic(500, 4, 10, 0.5, 42)["train"][1]
    train, val, test = stratified_split(labels, (0.15, 0.15), seed=0)
    everything = torch.cat([train, val, test])
    assert len(everything) == 500 and len(torch.unique(everything)) == 500
    for label in range(10):
        in_class = int((labels == label).sum())
        assert abs(int((labels[val] == label).sum()) - 0.15 * in_class) < 1
    assert len(val) == len(test) == 75
    again = stratified_split(labels, (0.15, 0.15), seed=0)
    other = stratified_split(labels, (0.15, 0.15), seed=1)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    assert not torch.equal(val, other[1])


def test_with_alpha_zero_the_distilled_student_is_the_baseline_bit_for_bit(tmp_path):
    """alpha=0 leaves only the hard term: equal weights at the end prove that both students
    started from the same weights and saw the same batches in the same order."""
    result = kdrun("train", *TINY, "loss.alpha=0", "model.student.dropout=0.2", "plots=false",
                   f"hydra.run.dir={tmp_path}/run", "cache.enabled=false", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    distilled = torch.load(tmp_path / "run/distilled.pt", weights_only=True)["state_dict"]
    baseline = torch.load(tmp_path / "run/baseline.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(distilled[k], baseline[k]) for k in distilled)
    # ... while with alpha > 0 the teacher changes what the student learns.
    result = kdrun("train", *TINY, "loss.alpha=0.5", "plots=false", f"hydra.run.dir={tmp_path}/run2",
                   "cache.enabled=false", cwd=tmp_path)  # fmt: skip
    distilled = torch.load(tmp_path / "run2/distilled.pt", weights_only=True)["state_dict"]
    baseline = torch.load(tmp_path / "run2/baseline.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(distilled[k], baseline[k]) for k in distilled)


@pytest.mark.parametrize("distill", [False, True])
def test_batches_gathered_per_step_train_exactly_as_batches_cut_from_the_epochs_order(monkeypatch, distill):
    """Large training sets are gathered a batch at a time, small ones reordered once per epoch:
    the two must give the same weights and metrics, bit for bit."""
    import kdrun.train as train_module
    from kdrun.data import Split
    from kdrun.losses import KDLoss

    generator = torch.Generator().manual_seed(0)
    train = Split(torch.randn(100, 12, generator=generator), torch.randint(0, 4, (100,), generator=generator))
    val = Split(torch.randn(20, 12, generator=generator), torch.randint(0, 4, (20,), generator=generator))
    teacher = MLP((12,), 4, [16])
    distillation = train_module.Distillation(KDLoss(0.6, 3.0), teacher) if distill else None
    settings = train_module.FitSettings(2, 16, "adam", 1e-2, 0.0, batch_seed=3)
    results = []
    for limit in (train_module.EPOCH_GATHER_BYTES, 0):
        monkeypatch.setattr(train_module, "EPOCH_GATHER_BYTES", limit)
        torch.manual_seed(0)
        model = MLP((12,), 4, [8])
        rows = train_module.fit(model, train, val, settings, "student", distillation)
        results.append(([{k: v for k, v in row.items() if k != "seconds"} for row in rows], model.state_dict()))
    (rows_epoch, weights_epoch), (rows_batch, weights_batch) = results
    assert rows_epoch == rows_batch
    assert all(torch.equal(weights_epoch[k], weights_batch[k]) for k in weights_epoch)


def test_per_phase_epochs_and_default_output_directory(tmp_path):
    result = kdrun("train", *TINY, "trainer.teacher_epochs=3", "trainer.student_epochs=1", "plots=false",
                   f"cache.dir={tmp_path}/cache", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run_dir,) = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}", f"{run_dir.parent.name}/{run_dir.name}")
    counts = {}
    for row in read_csv(run_dir / "metrics.csv"):
        counts[row["model"]] = counts.get(row["model"], 0) + 1
    assert counts == {"teacher": 3, "distilled": 1, "baseline": 1}


def test_the_cache_reuses_the_teacher_and_baseline_and_keys_on_their_settings(tmp_path):
    common = [*TINY, "plots=false", f"cache.dir={tmp_path}/cache"]
    first = kdrun("train", *common, f"hydra.run.dir={tmp_path}/a", cwd=tmp_path)
    second = kdrun("train", *common, "loss.temperature=5", f"hydra.run.dir={tmp_path}/b", cwd=tmp_path)
    third = kdrun("train", *common, "model.teacher.hidden=[12]", f"hydra.run.dir={tmp_path}/c", cwd=tmp_path)
    assert first.returncode == second.returncode == third.returncode == 0, third.stderr
    source = {d: {r["model"]: r["source"] for r in read_csv(tmp_path / d / "summary.csv")} for d in "abc"}
    assert source["a"] == {"teacher": "trained", "distilled": "trained", "baseline": "trained"}
    assert source["b"] == {"teacher": "cached", "distilled": "trained", "baseline": "cached"}
    assert source["c"] == {"teacher": "trained", "distilled": "trained", "baseline": "cached"}
    teacher_rows = [[r for r in read_csv(tmp_path / d / "metrics.csv") if r["model"] == "teacher"] for d in "ab"]
    assert teacher_rows[0] == teacher_rows[1]
    # A damaged entry is reported and retrained, never trusted.
    for entry in (tmp_path / "cache").glob("teacher-*.pt"):
        entry.write_bytes(b"not a checkpoint")
    fourth = kdrun("train", *common, f"hydra.run.dir={tmp_path}/d", cwd=tmp_path)
    assert fourth.returncode == 0 and "damaged" in fourth.stderr
    assert {r["model"]: r["source"] for r in read_csv(tmp_path / "d/summary.csv")}["teacher"] == "trained"


def test_help_lists_subcommands_without_importing_torch(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from kdrun.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
         "assert 'torch' not in sys.modules, 'torch imported'"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "compare" in result.stdout
    unknown = kdrun("trian", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr


def test_hydra_features_work_through_the_subcommand(tmp_path):
    help_text = kdrun("train", "--help", "dataset=digits", cwd=tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    page = help_text.stdout
    assert "cifar10 cifar100 digits* fashion_mnist mnist synthetic" in page and "model/student    cnn lenet5 mlp* mobilenetv2 resnet8 resnet8x4 resnet14" in page
    assert "schema" not in page and "\n  sweeps " not in page  # kdrun's plumbing is no option
    for key, meaning in (("loss.alpha", "weight of the teacher's term"), ("trainer.epochs", "epochs per model"), ("dataset.split_seed", "the split's seed")):
        line = next(line for line in page.splitlines() if line.strip().startswith(key + " "))
        assert meaning in line, line
    assert "dataset.n_samples" not in page  # digits' settings, not the synthetic set's
    assert "Examples:" in page and "kdrun train -m" in page
    assert "== Flags ==" in kdrun("train", "--hydra-help", cwd=tmp_path).stdout
    job = kdrun("train", "--cfg", "job", "loss.temperature=5", cwd=tmp_path)
    assert job.returncode == 0 and "temperature: 5" in job.stdout
    completion = kdrun("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "kdrun train loss.te", "COMP_POINT": "19"})
    assert completion.returncode == 0 and "loss.temperature=" in completion.stdout
    command_word = kdrun("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "kdrun tr", "COMP_POINT": "8"})
    assert command_word.stdout.split() == ["train"]
    assert not (tmp_path / "outputs").exists()


def test_multirun_writes_one_directory_per_job_under_outputs_multirun(tmp_path):
    result = kdrun("train", "-m", *TINY, "loss.alpha=0.5,0.9", "plots=false", f"cache.dir={tmp_path}/cache", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in (tmp_path / "outputs/multirun").glob("*/*/*") if p.is_dir())
    assert [p.name.split(",")[0] for p in jobs] == ["0_dataset.n_samples=120", "1_dataset.n_samples=120"]
    assert ["loss.alpha=0.5" in jobs[0].name, "loss.alpha=0.9" in jobs[1].name] == [True, True]
    assert (jobs[0].parent / "multirun.yaml").is_file()
    for job in jobs:
        assert (job / "summary.csv").is_file() and (job / "metrics.csv").is_file()


@pytest.mark.skipif(os.environ.get("KDRUN_CI") != "1", reason="builds a wheel: run in CI (KDRUN_CI=1)")
def test_configs_are_found_from_an_installed_wheel(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", repo], check=True)
    (wheel,) = (tmp_path / "dist").glob("kdrun-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", tmp_path / "site", wheel], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(tmp_path / "site")}
    where = subprocess.run([sys.executable, "-c", "import kdrun.config; print(kdrun.config.config_dir())"],
                           cwd=elsewhere, capture_output=True, text=True, env={**os.environ, **env})  # fmt: skip
    assert where.stdout.strip() == str(tmp_path / "site/kdrun/conf")
    result = kdrun("train", *TINY, "plots=false", f"cache.dir={tmp_path}/cache", cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stderr
    assert list((elsewhere / "outputs").glob("*/*/summary.csv"))


@pytest.mark.parametrize("name, weight_decay", [("adam", 0.0), ("adam", 0.01), ("adamw", 0.01)])
def test_fused_adam_steps_exactly_as_torch_optim_with_fused_kernel(name: str, weight_decay: float) -> None:
    from kdrun.optim import FusedAdam, make_optimizer

    torch.manual_seed(0)
    ours = MLP((6,), 3, [8, 8])
    theirs = copy.deepcopy(ours)
    optimizer = make_optimizer(ours.parameters(), name, 1e-2, weight_decay)
    assert isinstance(optimizer, FusedAdam)
    reference_class = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    reference = reference_class(theirs.parameters(), lr=1e-2, weight_decay=weight_decay, fused=True)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(5):
        for model, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for mine, expected in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(mine, expected)


def test_a_default_run_starts_exactly_one_python_process(tmp_path):
    """kdrun train runs its job in its own process and thread: no helper process, no fork, no
    thread beside it. An audit hook sees every way Python starts a process; Thread.start is
    watched for threads."""
    watcher = (
        "import sys\n"
        "def hook(event, args):\n"
        "    if event in ('os.fork', 'os.forkpty', 'os.posix_spawn', 'os.spawn', 'os.exec', 'os.system', 'subprocess.Popen', '_posixsubprocess.fork_exec'):\n"
        "        sys.stderr.write(f'STARTED A PROCESS: {event}\\n')\n"
        "sys.addaudithook(hook)\n"
        "import threading\n"
        "start = threading.Thread.start\n"
        "def reported_start(thread):\n"
        "    sys.stderr.write(f'STARTED A THREAD: {thread.name}\\n')\n"
        "    start(thread)\n"
        "threading.Thread.start = reported_start\n"
        "sys.argv = ['kdrun', *sys.argv[1:]]\n"
        "from kdrun.cli import main\n"
        "main()\n"
    )
    # matplotlib asks fc-list for the system's fonts once per machine, when it builds its font cache
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], check=True)
    args = ["train", f"hydra.run.dir={tmp_path}/run", f"cache.dir={tmp_path}/cache"]
    result = subprocess.run([sys.executable, "-c", watcher, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "STARTED A PROCESS" not in result.stderr and "STARTED A THREAD" not in result.stderr, result.stderr
    assert (tmp_path / "run" / "curves.png").is_file() and (tmp_path / "run" / "summary.csv").is_file()
    # the hook works: a run that starts a process is caught
    caught = subprocess.run([sys.executable, "-c", watcher.replace("from kdrun.cli import main\nmain()\n", "import subprocess; subprocess.run(['true'])\n")],
                            capture_output=True, text=True)  # fmt: skip
    assert "STARTED A PROCESS: subprocess.Popen" in caught.stderr


def test_fused_adam_leaves_parameters_without_gradients_alone_as_torch_optim_does() -> None:
    """A parameter with no gradient at a step (an unused branch, a loss's idle regressor) is
    skipped and keeps its own step count, exactly as torch.optim's fused Adam does."""
    from kdrun.optim import FusedAdam, make_optimizer

    torch.manual_seed(0)
    ours = torch.nn.ModuleList([torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)])
    theirs = copy.deepcopy(ours)
    optimizer = make_optimizer(ours.parameters(), "adam", 1e-2)
    assert isinstance(optimizer, FusedAdam)
    reference = torch.optim.Adam(theirs.parameters(), lr=1e-2, fused=True)
    x = torch.randn(8, 4)
    for step in range(6):
        for model, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            used = model[:1] if step in (1, 2, 4) else model  # the second layer idles at some steps
            sum(layer(x).square().mean() for layer in used).backward()
            opt.step()
    for mine, expected in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(mine, expected)


def test_the_results_table_keeps_its_layout_for_a_diverged_run():
    """A test NLL of 2e28 (a run whose loss exploded without turning NaN) is shown as 2e+28,
    not as 29 digits that push the table apart."""
    import io

    from rich.console import Console

    from kdrun.console import print_summary

    row = {"params": 10, "train_acc": 0.1, "val_acc": 0.1, "test_acc": 0.1, "agreement": 1.0, "source": "trained"}
    summary = {name: {**row, "model": name, "test_nll": nll} for name, nll in (("teacher", 2e28), ("distilled", 0.5), ("baseline", 7e-6))}
    out = io.StringIO()
    print_summary(Console(file=out, width=100), summary)
    table = out.getvalue()
    assert "2e+28" in table and "0.5000" in table and "7e-06" in table
    assert max(len(line) for line in table.splitlines()) < 90
