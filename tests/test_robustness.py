"""Robustness, tested the way users meet it: `kdrun` in a subprocess.

- A user's mistake (bad type, out-of-range or non-finite value, unknown option, misspelt key,
  missing or damaged data, a folder that cannot be written) exits non-zero with one message that
  names the setting or file, prints no traceback and leaves nothing that looks like a finished run.
- SIGINT / SIGTERM stop training within seconds; the run is marked interrupted and metrics.csv
  stays whole.
- A non-finite loss fails that job with a message naming the model and the epoch; a sweep goes on.
- Same config and seed give the same CSV bytes apart from timing columns.
- A sweep re-run into its own folder skips completed jobs and redoes the others.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import os
import signal
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
from conftest import has_traceback, interrupt, killed_if_left, run_kdrun, start_kdrun, wait_for_metrics

from kdrun.run_files import METRICS_COLUMNS, SUMMARY_COLUMNS, TIMING_COLUMNS, MetricsLog, read_status, write_csv_atomic

pytestmark = pytest.mark.slow

# --------------------------------------------------------------------------- bad input


@dataclass
class Bad:
    """One bad command line: ``args`` after ``kdrun`` ({tmp} is the case's folder); stderr must
    contain every string of ``names``."""

    id: str
    args: tuple[str, ...]
    names: tuple[str, ...]
    setup: Optional[Callable[[Path], None]] = None
    kdrun_message: bool = True  # one "kdrun ERROR:" line
    marks: tuple = field(default_factory=tuple)


def _train(*overrides: str) -> tuple[str, ...]:
    return ("train", "hydra.run.dir={tmp}/run", *overrides)


def _hydra(id: str, override: str, *names: str, marks=()) -> Bad:
    """A mistake Hydra finds while composing the config; kdrun says it in one line too."""
    return Bad(id, _train(override), names or (override.split("=")[0], override.split("=", 1)[1]), marks=marks)


def _value(id: str, override: str, *names: str) -> Bad:
    key, value = override.split("=", 1)
    return Bad(id, _train(override), names or (key, value, "not allowed"))


def _afile(tmp: Path) -> None:
    (tmp / "afile").write_text("a file, not a folder\n")


def _idx_header(magic: int, *dims: int) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims)


def _garbage_idx(tmp: Path) -> None:
    root = tmp / "data"
    root.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / name).write_bytes(b"this is not an IDX file at all")


def _truncated_idx(tmp: Path) -> None:
    root = tmp / "data" / "FashionMNIST" / "raw"
    root.mkdir(parents=True)
    (root / "train-images-idx3-ubyte").write_bytes(_idx_header(0x803, 100, 28, 28) + bytes(1000))
    (root / "train-labels-idx1-ubyte").write_bytes(_idx_header(0x801, 100) + bytes(100))
    (root / "t10k-images-idx3-ubyte").write_bytes(_idx_header(0x803, 10, 28, 28) + bytes(7840))
    (root / "t10k-labels-idx1-ubyte").write_bytes(_idx_header(0x801, 10) + bytes(10))


def _five_idx_images(tmp: Path) -> None:
    root = tmp / "data"
    root.mkdir()
    for prefix, n in (("train", 5), ("t10k", 3)):
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_header(0x803, n, 28, 28) + bytes(784 * n))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_header(0x801, n) + bytes(range(n)))


def _broken_gzip(tmp: Path) -> None:
    root = tmp / "data"
    root.mkdir()
    whole = gzip.compress(_idx_header(0x803, 100, 28, 28) + bytes(78400))
    (root / "train-images-idx3-ubyte.gz").write_bytes(whole[: len(whole) // 2])
    (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_header(0x801, 100) + bytes(100)))
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_header(0x803, 10, 28, 28) + bytes(7840)))
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_header(0x801, 10) + bytes(10)))


BAD_INPUTS = [
    # wrong types: Hydra rejects them while composing the config
    _hydra("type-alpha", "loss.alpha=abc"),
    _hydra("tilde-path", "dataset.root=~/data", "dataset.root=~/data", "$HOME"),  # the shell leaves ~ after = as it is
    _hydra("unquoted-path", "model.teacher.checkpoint=sweep/0_loss.alpha=0.5,loss.temperature=1/teacher.pt", "needs quotes",
           "\"model.teacher.checkpoint='sweep/0_loss.alpha=0.5,loss.temperature=1/teacher.pt'\""),  # a sweep's job folder
    _hydra("type-lr", "trainer.lr=fast"),
    _hydra("type-epochs", "trainer.epochs=ten"),
    _hydra("type-batch-float", "trainer.batch_size=1.5"),
    _hydra("type-plots", "plots=maybe"),
    _hydra("type-hidden", "model.student.hidden=abc", "model.student.hidden"),
    _hydra("type-hidden-item", "model.teacher.hidden=[a]", "model.teacher.hidden", "'a'"),
    # int settings: nan and inf are type errors at compose time
    _hydra("nan-epochs", "trainer.epochs=nan"),
    _hydra("inf-batch", "trainer.batch_size=inf"),
    _hydra("nan-seed", "trainer.seed=nan"),
    _hydra("inf-threads", "trainer.threads=inf"),
    _hydra("nan-teacher-epochs", "trainer.teacher_epochs=nan"),
    _hydra("nan-student-epochs", "trainer.student_epochs=nan"),
    _hydra("nan-n-samples", "dataset.n_samples=nan"),
    _hydra("inf-input-dim", "dataset.input_dim=inf"),
    _hydra("nan-num-classes", "dataset.num_classes=nan"),
    _hydra("nan-hidden", "model.teacher.hidden=[nan]", "model.teacher.hidden", "nan"),
    # out of range and non-finite: kdrun.config.validate, one line naming key, value, what is allowed
    _value("alpha-high", "loss.alpha=1.5"),
    _value("alpha-negative", "loss.alpha=-0.1"),
    _value("alpha-nan", "loss.alpha=nan"),
    _value("alpha-inf", "loss.alpha=inf"),
    _value("temperature-zero", "loss.temperature=0"),
    _value("temperature-nan", "loss.temperature=nan"),
    _value("temperature-inf", "loss.temperature=inf"),
    _value("temperature-negative", "loss.temperature=-2"),
    _value("lr-zero", "trainer.lr=0"),
    _value("lr-nan", "trainer.lr=nan"),
    _value("lr-inf", "trainer.lr=inf"),
    _value("wd-negative", "trainer.weight_decay=-1"),
    _value("wd-nan", "trainer.weight_decay=nan"),
    _value("wd-inf", "trainer.weight_decay=inf"),
    _value("epochs-zero", "trainer.epochs=0"),
    _value("teacher-epochs-zero", "trainer.teacher_epochs=0"),
    _value("student-epochs-negative", "trainer.student_epochs=-3"),
    _value("batch-zero", "trainer.batch_size=0"),
    _value("threads-zero", "trainer.threads=0"),
    _value("seed-negative", "trainer.seed=-1"),
    _value("seed-beyond-32-bits", "trainer.seed=4294967296", "trainer.seed=4294967296", "[0, 4294967295]"),  # was seed 0 again
    _value("split-seed-beyond-64-bits", "dataset.split_seed=99999999999999999999"),  # was torch's traceback
    _value("data-seed-negative", "dataset.seed=-1"),
    Bad("nesterov-without-momentum", _train("trainer.optimizer=sgd", "trainer.nesterov=true", "trainer.momentum=0"),
        ("trainer.nesterov", "a momentum > 0")),  # was torch's traceback
    Bad("nesterov-with-adam", _train("trainer.nesterov=true"), ("trainer.nesterov", "optimizer=sgd")),  # was ignored
    Bad("dkd-weights-all-zero", _train("loss=dkd", "loss.alpha=0", "loss.beta=0", "loss.ce_weight=0"), ("loss.ce_weight=0", "learns nothing")),
    Bad("dist-weights-all-zero", _train("loss=dist", "loss.beta=0", "loss.gamma=0", "loss.ce_weight=0"), ("loss.ce_weight=0", "learns nothing")),
    _value("val-fraction-zero", "dataset.val_fraction=0"),
    _value("val-fraction-nan", "dataset.val_fraction=nan"),
    _value("test-fraction-one", "dataset.test_fraction=1"),
    _value("test-fraction-inf", "dataset.test_fraction=inf"),
    Bad("fractions-sum", _train("dataset.val_fraction=0.5", "dataset.test_fraction=0.5"), ("dataset.val_fraction + dataset.test_fraction", "less than 1")),
    _value("signal-negative", "dataset.signal_scale=-1"),
    _value("signal-nan", "dataset.signal_scale=nan"),
    _value("signal-inf", "dataset.signal_scale=inf"),
    _value("n-samples-one", "dataset.n_samples=1"),
    _value("input-dim-zero", "dataset.input_dim=0"),
    _value("num-classes-one", "dataset.num_classes=1"),
    _value("transfer-zero", "dataset.transfer_size=0"),
    _value("transfer-nan", "dataset.transfer_size=nan"),
    _value("transfer-inf", "dataset.transfer_size=inf"),
    _value("transfer-fractional-count", "dataset.transfer_size=2.5"),
    Bad("hidden-zero", _train("model.teacher.hidden=[0]"), ("model.teacher.hidden", "[0]", ">= 1")),
    Bad("hidden-negative", _train("model.student.hidden=[8,-4]"), ("model.student.hidden", "-4", ">= 1")),
    _value("dropout-one", "model.teacher.dropout=1"),
    _value("dropout-nan", "model.student.dropout=nan"),
    _value("dropout-inf", "model.student.dropout=inf"),
    _value("dropout-negative", "model.teacher.dropout=-0.5"),
    _value("optimizer", "trainer.optimizer=rmsprop", "trainer.optimizer", "rmsprop", "adam"),
    _value("device", "trainer.device=tpu", "trainer.device", "tpu", "cpu"),
    _value("device-missing-cuda", "trainer.device=cuda:7", "trainer.device", "cuda:7"),
    Bad("labels-off-alpha", _train("dataset.transfer_labels=false"), ("loss.alpha", "transfer_labels=false", "must be 1")),
    Bad("labels-off-mse-alpha", _train("loss=mse_logits", "dataset.transfer_labels=false", "loss.alpha=0.5"), ("loss.alpha=0.5", "must be 1")),
    _value("empty-teacher-file", "model.teacher.checkpoint=", "model.teacher.checkpoint=''", "or null to train the teacher"),
    Bad("empty-split", _train("dataset.n_samples=3"), ("dataset synthetic", "split is empty", "val_fraction")),
    Bad("empty-split-beside-a-published-test-split", _train("dataset=mnist", "dataset.root={tmp}/data"),
        ("dataset mnist: the val split is empty: 5 examples split with dataset.val_fraction=0.0833", "round(fraction x 5)"), _five_idx_images),
    Bad("missing-value", _train("loss.alpha=???"), ("loss.alpha", "has no value")),
    # the README's own words, other notations, command-line flags
    Bad("bare-alpha", _train("alpha=0.5"), ("alpha is not a setting", "did you mean loss.alpha?")),
    Bad("alias-T", _train("loss.T=5"), ("loss.T is not a setting", "did you mean loss.temperature?")),
    Bad("flag-epochs", _train("--epochs", "5"), ("--epochs is not an option", "trainer.epochs=5")),
    Bad("flag-equals", _train("--lr=0.1"), ("--lr=0.1", "trainer.lr=0.1")),
    Bad("flag-between-settings", ("train", "hydra.run.dir={tmp}/run", "-m", "loss.alpha=0.5,0.9"),
        ("-m goes before the settings, which Hydra reads last: kdrun train -m ", "run loss.alpha=0.5,0.9")),  # was argparse's usage and "unrecognized arguments"
    # unknown group options
    _hydra("unknown-dataset", "dataset=nope", "dataset=nope", "synthetic"),
    _hydra("null-group", "logger=null", "config group cannot be null", "logger=[]"),  # was Hydra's traceback
    _hydra("tracker-not-chosen", "logger.mlflow.tracking_uri=x", "logger.mlflow is not a setting until its tracker is chosen", "logger=mlflow"),
    Bad("tracker-not-chosen-appended", _train("+logger.mlflow.tracking_uri=x"), ("logger.mlflow is set, but no tracker builds it: add logger=mlflow",)),
    _hydra("stack-under-trainer", "trainer.stack=false", "trainer.stack is not a setting", "hydra.launcher.stack"),
    _hydra("unknown-option-in-a-list", "logger=[tensorboard,foo]", "logger=foo is not an option", "csv, mlflow, tensorboard"),
    _hydra("unknown-model", "model=nope", "model=nope", "hinton"),
    _hydra("unknown-student", "model/student=mpl", "model/student=mpl", "did you mean model/student=mlp"),
    _hydra("unknown-loss", "loss=nope", "loss=nope", "kd"),
    # misspelt keys
    _hydra("misspelt-alpha", "loss.alpah=1", "alpah", "loss.alpah"),
    _hydra("misspelt-epochs", "trainer.epoch=3", "trainer.epoch"),
    _hydra("misspelt-hidden", "model.teacher.hiden=[4]", "model.teacher.hiden"),
    _hydra("misspelt-root", "plot=false", "plot"),
    Bad("misspelt-appended", _train("+trainer.epoch=3"), ("trainer.epoch",)),
    Bad("misspelt-appended-dataset", _train("+dataset.n_sample=50"), ("dataset.n_sample",)),
    # missing or damaged data files
    Bad("data-missing", _train("dataset=mnist", "dataset.root={tmp}/nowhere"), ("train-images-idx3-ubyte", "{tmp}/nowhere")),
    Bad("data-garbage", _train("dataset=mnist", "dataset.root={tmp}/data"), ("{tmp}/data/train-images-idx3-ubyte", "not an IDX"), _garbage_idx),
    Bad("data-truncated", _train("dataset=fashion_mnist", "dataset.root={tmp}/data"), ("train-images-idx3-ubyte", "truncated"), _truncated_idx),
    Bad("data-broken-gzip", _train("dataset=mnist", "dataset.root={tmp}/data"), ("train-images-idx3-ubyte.gz", "gzip"), _broken_gzip),
    # folders that cannot be written (under a file: this fails for root too)
    Bad("run-dir-under-file", ("train", "hydra.run.dir={tmp}/afile/run"), ("hydra.run.dir", "{tmp}/afile", "not a folder"), _afile),
    Bad("optuna-space-as-hydra-key", ("train", "hparams_search=kd_optuna", "hydra.sweeper.params.loss.alpha=interval(0.5,0.6)", "hydra.sweep.dir={tmp}/sweep"),
        ("the search space is the setting's own: 'loss.alpha=interval(0.5,0.6)'",)),  # was Hydra's "not supported"
    Bad("joblib-without-workers", ("train", "-m", "hydra/launcher=kd_joblib", "hydra.launcher.n_jobs=0", "hydra.sweep.dir={tmp}/sweep", "loss.alpha=0.5,0.9"),
        ("hydra.launcher.n_jobs=0 is not allowed", ">= 1")),  # was joblib's traceback
    Bad("sweep-dir-under-file", ("train", "-m", "hydra.sweep.dir={tmp}/afile/sweep", "loss.alpha=0.5,0.9"), ("hydra.sweep.dir", "{tmp}/afile", "not a folder"), _afile),
    Bad("config-dir-is-file", ("train", "--config-dir", "{tmp}/afile", "hydra.run.dir={tmp}/run"),
        ("--config-dir {tmp}/afile is a file: give the folder",), _afile),  # was "not found"
    Bad("config-dir-joined-is-file", ("train", "--config-dir={tmp}/afile", "hydra.run.dir={tmp}/run"),
        ("--config-dir {tmp}/afile is a file: give the folder",), _afile),
    Bad("unknown-flag-between-settings", _train("--epochs", "5", "-m", "loss.alpha=0.5,0.9"), ("--epochs is not an option", "trainer.epochs=5")),
    Bad("run-dir-is-file", ("train", "hydra.run.dir={tmp}/afile"), ("hydra.run.dir", "{tmp}/afile", "not a folder"), _afile),
    Bad("cache-dir-under-file", _train("cache.dir={tmp}/afile/cache"), ("cache.dir", "{tmp}/afile", "not a folder"), _afile),
    Bad("cache-dir-in-proc", _train("cache.dir=/proc/kdrun-cache"), ("cache.dir='/proc/kdrun-cache'", "not allowed"),
        marks=(pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc"),)),  # writable to access(), takes no folder
]

COMPARE_MISSING = not importlib.util.find_spec("kdrun.compare")
COMPARE_SKIP = pytest.mark.skipif(COMPARE_MISSING, reason="kdrun.compare is not written yet")


def _garbage_csvs(tmp: Path) -> None:
    run = tmp / "runs" / "2024-01-01" / "00-00-00"
    run.mkdir(parents=True)
    (run / "summary.csv").write_bytes(b"\x00\xff garbage,,\n\"unterminated\nnot,a,summary\n")
    (run / "metrics.csv").write_text("model,epoch\nteacher,notanumber\n")
    (tmp / "runs" / "summary.csv").write_text("just one line without the columns\n")


COMPARE_INPUTS = [
    Bad("compare-missing-dir", ("compare", "{tmp}/nowhere"), ("{tmp}/nowhere",), marks=(COMPARE_SKIP,)),
    Bad("compare-empty-dir", ("compare", "{tmp}/empty"), ("{tmp}/empty",), lambda tmp: (tmp / "empty").mkdir(), marks=(COMPARE_SKIP,)),
    Bad("compare-garbage-csv", ("compare", "{tmp}/runs"), ("{tmp}/runs",), _garbage_csvs, marks=(COMPARE_SKIP,)),
]

ALL_BAD = BAD_INPUTS + COMPARE_INPUTS


def _run_bad(case: Bad, tmp: Path):
    tmp.mkdir(parents=True, exist_ok=True)
    if case.setup:
        case.setup(tmp)
    args = [a.replace("{tmp}", str(tmp)) for a in case.args]
    return run_kdrun(*args, cwd=tmp, timeout=180)


@pytest.fixture(scope="module")
def bad_input_results(request, tmp_path_factory):
    """Runs every selected bad-input case, each in its own process, a few at a time (they spend
    most of their second starting Python and composing the config)."""
    wanted = {
        item.callspec.id
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_bad_input" and hasattr(item, "callspec")
    }
    base = tmp_path_factory.mktemp("bad")
    cases = [c for c in ALL_BAD if c.id in wanted and not (c.id.startswith("compare") and COMPARE_MISSING)]
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        futures = {c.id: pool.submit(_run_bad, c, base / c.id) for c in cases}
    return {id: (future.result(), base / id) for id, future in futures.items()}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in ALL_BAD])
def test_bad_input(case: Bad, bad_input_results):
    result, tmp = bad_input_results[case.id]
    stderr = result.stderr
    assert result.returncode != 0, f"exit 0 for {case.args}\n{result.stdout}"
    assert not has_traceback(stderr), stderr
    for name in case.names:
        assert name.replace("{tmp}", str(tmp)) in stderr, f"{name!r} not in stderr:\n{stderr}"
    if case.kdrun_message:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one message:\n{stderr}"
    # nothing that looks like a finished run
    assert not list(tmp.rglob("summary.csv")) or case.id.startswith("compare"), list(tmp.rglob("summary.csv"))
    assert not list(tmp.rglob("*.pt"))
    for status_file in tmp.rglob("status.json"):
        assert json.loads(status_file.read_text())["status"] == "failed", status_file.read_text()
    assert "Distillation improvement" not in result.stdout


def test_memory_that_cannot_be_allocated_is_one_message():
    """A model too large for the machine (model.student.hidden=[100000,100000]) was torch's traceback."""
    import torch

    from kdrun.errors import failure_of

    with pytest.raises(RuntimeError) as info:
        torch.empty(2**60, dtype=torch.uint8)
    code, message = failure_of(info.value)
    assert code == 1 and message.startswith("out of memory: DefaultCPUAllocator: can't allocate memory: you tried to allocate"), message
    assert "trainer.batch_size" in message and "enforce fail" not in message


def test_hydra_full_error_shows_the_traceback(tmp_path):
    result = run_kdrun("train", f"hydra.run.dir={tmp_path / 'run'}", "loss.alpha=2", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0
    assert has_traceback(result.stderr) and "ConfigError" in result.stderr
    assert read_status(tmp_path / "run")["status"] == "failed"


def test_a_rejected_command_leaves_no_folder_behind(tmp_path):
    refused_while_running = ("loss=dkd", "dataset.transfer_labels=false")  # found once the loss is built
    for args in (("loss.alpha=1.5",), ("trainer.epoch=3",), ("-m", "loss.alpha=0.5,1.5", "hydra.sweep.dir=sweep"), refused_while_running):
        result = run_kdrun("train", *args, cwd=tmp_path)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("override", ["loss.alpha=0.5)", "loss.alpha=0.1,,0.2"])
def test_a_typo_in_a_number_is_not_told_to_be_quoted(tmp_path, override):
    result = run_kdrun("train", override, cwd=tmp_path)
    assert result.returncode == 2 and "cannot read the command line" in result.stderr and "quotes" not in result.stderr, result.stderr


def test_a_setting_one_swept_option_lacks_names_that_job(tmp_path):
    result = run_kdrun("train", "-m", "loss=kd,dist", "loss.alpha=0.5", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "the sweep's job loss=dist: loss.alpha is not a setting" in lines[0]
    assert not (tmp_path / "sweep").exists()


def test_a_rejected_sweep_into_an_earlier_sweeps_folder_keeps_its_record(tmp_path):
    """The folder's multirun.yaml still describes the sweep that ran there, not the refused one."""
    sweep = tmp_path / "sweep"
    (sweep / "0_loss.alpha=0.5").mkdir(parents=True)
    (sweep / "0_loss.alpha=0.5" / "status.json").write_text('{"status": "completed"}')
    os.utime(sweep / "0_loss.alpha=0.5" / "status.json", (time.time() - 60, time.time() - 60))
    (sweep / "multirun.yaml").write_text("the earlier sweep\n")
    result = run_kdrun("train", "-m", "loss.alpha=0.5,1.5", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 2 and "loss.alpha=1.5" in result.stderr
    assert (sweep / "multirun.yaml").read_text() == "the earlier sweep\n"


def test_runs_started_in_the_same_second_never_share_a_folder(tmp_path):
    """The default folder is named by the clock: one that another run took gets a suffix."""
    import datetime

    now = datetime.datetime.now()
    taken = []
    for offset in range(0, 30):  # every name the run could get in the next 30 seconds is taken
        moment = now + datetime.timedelta(seconds=offset)
        folder = tmp_path / "outputs" / moment.strftime("%Y-%m-%d") / moment.strftime("%H-%M-%S")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "status.json").write_text('{"status": "completed"}')
        taken.append(folder)
    result = run_kdrun("train", cwd=tmp_path, check=True)
    made = [p for p in (tmp_path / "outputs").glob("*/*") if p not in taken]
    assert len(made) == 1 and made[0].name.endswith("-2"), made
    assert (made[0] / "summary.csv").is_file() and str(made[0]) in result.stdout
    assert all((folder / "status.json").read_text() == '{"status": "completed"}' for folder in taken)


def test_a_reader_that_stops_reading_never_fails_the_run(tmp_path):
    """kdrun train | head -1: the pipe closes, the run goes on and completes."""
    import subprocess

    from conftest import kdrun_command, kdrun_env

    command = kdrun_command("train", f"hydra.run.dir={tmp_path / 'run'}", "trainer.epochs=3", cwd=tmp_path)
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kdrun_env())
    with killed_if_left(proc):
        proc.stdout.readline()
        proc.stdout.close()  # the reader leaves
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert read_status(tmp_path / "run")["status"] == "completed" and b"Traceback" not in stderr


# --------------------------------------------------------------------------- interrupts


def _read_metrics(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == METRICS_COLUMNS
    for row in rows[1:]:
        assert len(row) == len(METRICS_COLUMNS), f"half a row: {row}"
    return rows[1:]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_quickly_and_keeps_metrics(tmp_path, signum):
    run = tmp_path / "run"
    with killed_if_left(start_kdrun("train", f"hydra.run.dir={run}", "trainer.epochs=100000", "cache.enabled=false", cwd=tmp_path)) as proc:
        wait_for_metrics(proc, run, rows=5)
        assert read_status(run)["status"] == "running"
        stderr, stopped_after = interrupt(proc, signum)
    assert stopped_after < 5, stopped_after
    assert proc.returncode == 128 + signum, stderr
    assert not has_traceback(stderr), stderr
    assert "interrupted" in stderr
    status = read_status(run)
    assert status["status"] == "interrupted" and status["signal"] == signum.name
    rows = _read_metrics(run / "metrics.csv")
    assert len(rows) >= 5 and [int(r[1]) for r in rows] == list(range(1, len(rows) + 1))
    assert not (run / "summary.csv").exists() and not list(run.glob("*.pt"))


# --------------------------------------------------------------------------- non-finite loss

NAN_LR = "trainer.lr=1e30"  # Adam's first steps make the weights ~1e30: the logits overflow at once


def test_non_finite_loss_fails_the_run(tmp_path):
    run = tmp_path / "run"
    result = run_kdrun("train", f"hydra.run.dir={run}", NAN_LR, "trainer.epochs=3", cwd=tmp_path)
    assert result.returncode == 1
    assert not has_traceback(result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "teacher" in lines[0] and "epoch 1 of 3" in lines[0] and "trainer.lr" in lines[0], result.stderr
    status = read_status(run)
    assert status["status"] == "failed" and "teacher" in status["message"]
    assert _read_metrics(run / "metrics.csv") == []
    assert not (run / "summary.csv").exists()


def test_non_finite_loss_in_a_sweep_lets_the_other_jobs_finish(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_kdrun("train", "-m", f"hydra.sweep.dir={sweep}", "trainer.lr=1e-3,1e30", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert not has_traceback(result.stderr), result.stderr
    good, bad = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert read_status(good)["status"] == "completed" and (good / "summary.csv").is_file()
    assert read_status(bad)["status"] == "failed" and not (bad / "summary.csv").exists()
    assert "teacher" in result.stderr and "epoch 1" in result.stderr


# --------------------------------------------------------------------------- identical reruns


def _without(path: Path, drop: set[str]) -> bytes:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    keep = [i for i, name in enumerate(rows[0]) if name not in drop]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        writer.writerow([row[i] for i in keep])
    return out.getvalue().encode()


def test_identical_reruns(tmp_path):
    timing = set(TIMING_COLUMNS)
    assert timing <= set(METRICS_COLUMNS) | set(SUMMARY_COLUMNS)
    args = ("trainer.epochs=2", "trainer.seed=7", "model.teacher.dropout=0.2")
    runs = {name: tmp_path / name for name in ("a", "b", "fill", "cached")}

    def run(name: str, cache: bool):
        return run_kdrun("train", f"hydra.run.dir={runs[name]}", *args, f"cache.enabled={str(cache).lower()}", cwd=tmp_path, check=True)

    with ThreadPoolExecutor(max_workers=3) as pool:  # independent runs; "fill" fills the cache
        list(pool.map(run, ("a", "b", "fill"), (False, False, True)))
    run("cached", True)
    for other in ("b", "fill"):
        for csv_name in ("metrics.csv", "summary.csv"):
            assert _without(runs["a"] / csv_name, timing) == _without(runs[other] / csv_name, timing), (other, csv_name)
    # the cached teacher and baseline give the same numbers; only timings and `source` differ
    assert _without(runs["a"] / "metrics.csv", timing) == _without(runs["cached"] / "metrics.csv", timing)
    assert _without(runs["a"] / "summary.csv", timing | {"source"}) == _without(runs["cached"] / "summary.csv", timing | {"source"})
    sources = [row["source"] for row in csv.DictReader(open(runs["cached"] / "summary.csv"))]
    assert sources == ["cached", "trained", "cached"]


# --------------------------------------------------------------------------- resumable sweeps


def test_rerun_of_a_sweep_skips_completed_jobs_and_redoes_the_rest(tmp_path):
    sweep = tmp_path / "sweep"
    command = ("train", "-m", f"hydra.sweep.dir={sweep}", "loss.alpha=0.5,0.9", "trainer.lr=1e-3,1e30")
    first = run_kdrun(*command, cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(jobs) == 4
    status = {job.name: read_status(job)["status"] for job in jobs}
    completed = [job for job in jobs if status[job.name] == "completed"]
    failed = [job for job in jobs if status[job.name] == "failed"]
    assert len(completed) == 2 and len(failed) == 2, status
    # pretend the second completed job was stopped by Ctrl-C before it finished
    interrupted, kept = completed[1], completed[0]
    (interrupted / "status.json").write_text(json.dumps({"status": "interrupted"}))
    before = {job.name: (job / "status.json").stat().st_mtime_ns for job in jobs}
    kept_summary = (kept / "summary.csv").stat().st_mtime_ns
    kept_metrics = (kept / "metrics.csv").read_bytes()
    time.sleep(0.05)

    second = run_kdrun(*command, cwd=tmp_path)
    assert second.returncode == 1, second.stderr  # the NaN jobs fail again
    assert not has_traceback(second.stderr)
    assert "skipped" in second.stdout
    # the completed job: untouched
    assert (kept / "summary.csv").stat().st_mtime_ns == kept_summary
    assert (kept / "status.json").stat().st_mtime_ns == before[kept.name]
    assert (kept / "metrics.csv").read_bytes() == kept_metrics
    # the interrupted job: done again, and completed this time
    assert read_status(interrupted)["status"] == "completed" and (interrupted / "summary.csv").is_file()
    # the failed jobs: tried again
    for job in failed:
        assert (job / "status.json").stat().st_mtime_ns != before[job.name]
        assert read_status(job)["status"] == "failed"


def test_a_changed_config_in_the_same_folder_is_not_skipped(tmp_path):
    sweep = tmp_path / "sweep"
    run_kdrun("train", "-m", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job", "loss.alpha=0.5", cwd=tmp_path, check=True)
    job = sweep / "job"
    old_hash = read_status(job)["config_hash"]
    # the same job folder, a different config: trained again
    run_kdrun("train", "-m", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job", "loss.alpha=0.5", "trainer.seed=3", cwd=tmp_path, check=True)
    status = read_status(job)
    assert status["status"] == "completed" and status["config_hash"] != old_hash


# --------------------------------------------------------------------------- files written whole


def test_metrics_rows_are_appended_whole_and_new_columns_rewrite_the_file(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv")
    log.append([{"model": "teacher", "epoch": 1, "train_loss": 0.5, "seconds": 0.1}])
    log.append([{"model": "teacher", "epoch": 2, "train_loss": float("nan"), "val_acc": 1.0}])
    text = (tmp_path / "metrics.csv").read_text()
    assert text.endswith("\n") and text.count("\n") == 3
    assert len(_read_metrics(tmp_path / "metrics.csv")) == 2
    # a loss's parts: the file gains their columns, the earlier rows empty cells, in one rename
    log.append([{"model": "distilled", "epoch": 1, "train_loss": 0.25, "soft_loss": 0.5}])
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == [*METRICS_COLUMNS, "soft_loss"] and [len(r) for r in rows] == [len(rows[0])] * 4
    assert rows[1][-1] == "" and rows[3][-1] == "0.5"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_whole_file_csv_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "summary.csv"
    write_csv_atomic(path, [{"model": "teacher"}], SUMMARY_COLUMNS)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_csv_atomic(path, [{"model": "distilled"}], SUMMARY_COLUMNS)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]  # no temporary file left


def test_unreadable_status_reads_as_none(tmp_path):
    assert read_status(tmp_path) is None
    (tmp_path / "status.json").write_text("{not json")
    assert read_status(tmp_path) is None
    (tmp_path / "status.json").write_text("[1, 2]")
    assert read_status(tmp_path) is None
