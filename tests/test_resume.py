"""Long runs: checkpoints, resuming an interrupted or killed run, and trainer.report=best_val.

A run stopped in any phase and run again into the same folder must end with what the run that
never stopped wrote: the same metrics rows (every epoch once), summary and weights, bit for bit
on the CPU apart from the timing columns.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_SYNTHETIC, has_traceback, interrupt, kdrun_env, killed_if_left, run_kdrun, start_kdrun

from kdrun.checkpoints import AUTO_SECONDS, Checkpoint
from kdrun.data import Split
from kdrun.losses import FitNetLoss
from kdrun.models import CNN
from kdrun.interrupts import Terminated, sigterm_interrupts
from kdrun.run_files import read_status, replace_atomically
from kdrun.train import Distillation, FitSettings, fit, reported_epoch

TIMING = {"seconds", "train_seconds"}
# Each phase long enough to be caught in; checkpoints every 7 epochs, so a resumed model redoes
# the epochs after its last one.
LONG = ("trainer.teacher_epochs=300", "trainer.student_epochs=300", "trainer.checkpoint_every=7", "cache.enabled=false")


def _rows(path: Path, drop: set[str] = TIMING) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: torch.load(run / f"{name}.pt", weights_only=True)["state_dict"] for name in ("teacher", "distilled", "baseline")}


def _assert_same_results(run: Path, reference: Path) -> None:
    assert _rows(run / "metrics.csv") == _rows(reference / "metrics.csv")
    assert _rows(run / "summary.csv") == _rows(reference / "summary.csv")
    for name, weights in _weights(reference).items():
        resumed = _weights(run)[name]
        assert all(torch.equal(weights[key], resumed[key]) for key in weights), name


def _wait_for_rows(proc, metrics: Path, model: str, rows: int, timeout: float = 120) -> None:
    """Until ``metrics`` has ``rows`` rows of ``model``: that model is training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if metrics.is_file() and sum(line.startswith(f"{model},") for line in metrics.read_text().splitlines()) >= rows:
            return
        time.sleep(0.01)
    raise AssertionError(f"{model} did not reach {rows} epochs in {timeout} s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The run that never stopped."""
    tmp = tmp_path_factory.mktemp("reference")
    run_kdrun("train", f"hydra.run.dir={tmp / 'run'}", *LONG, cwd=tmp, check=True)
    return tmp / "run"


@pytest.mark.parametrize(
    ("signum", "phase", "resumed"),
    [(signal.SIGTERM, "teacher", "the teacher"), (signal.SIGKILL, "distilled", "the distilled student"), (signal.SIGINT, "baseline", "the baseline student")],
    ids=["SIGTERM-teacher", "SIGKILL-student", "SIGINT-baseline"],
)
def test_a_stopped_run_continues_to_the_uninterrupted_results(tmp_path, reference, signum, phase, resumed):
    run = tmp_path / "run"
    with killed_if_left(start_kdrun("train", f"hydra.run.dir={run}", *LONG, cwd=tmp_path)) as proc:
        _wait_for_rows(proc, run / "metrics.csv", phase, 30)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    expected = 128 + signum if signum != signal.SIGKILL else -signum
    assert proc.returncode == expected, (proc.returncode, read_status(run).get("status"), stderr[-2000:])
    status = read_status(run)
    if signum == signal.SIGKILL:
        assert status["status"] == "running"  # what a killed process leaves: recognised as stale below
    else:
        assert status["status"] == "interrupted" and "run the same command again" in status["message"], status
        assert "run the same command again" in stderr and not has_traceback(stderr)
    assert not (run / "summary.csv").exists()
    assert (run / "checkpoints" / f"{phase}.pt").is_file()

    again = run_kdrun("train", f"hydra.run.dir={run}", *LONG, cwd=tmp_path, check=True)
    assert re.search(f"resuming {resumed} at epoch (\\d+) of 300 \\(.*\\); epochs 1-\\d+ as they were:", again.stdout), again.stdout
    first = int(re.search(f"resuming {resumed} at epoch (\\d+)", again.stdout).group(1))
    assert f"epochs 1-{first - 1} as they were:" in again.stdout
    for finished in {"teacher": [], "distilled": ["the teacher"], "baseline": ["the teacher", "the distilled student"]}[phase]:  # not trained again: said so
        assert f"{finished} trained all 300 epochs before the run stopped (" in again.stdout, again.stdout
    assert read_status(run)["status"] == "completed"
    _assert_same_results(run, reference)
    assert not (run / "checkpoints").exists()  # trainer.keep_checkpoints=false: only the final models stay


def _exit_as_submitit_does(signum: int, frame: object) -> None:
    sys.exit(-1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
def test_a_signal_during_a_checkpoint_write_stops_the_run_once_the_file_is_whole(tmp_path, signum):
    # Raised inside torch.save's zip writer, the signal's exception left the writer broken, and
    # its "unexpected pos" error replaced the interruption: a failed run with a traceback.
    # SIGUSR2: submitit's handler, which requeues a SLURM job and calls sys.exit.
    path = tmp_path / "teacher.pt"

    def write(tmp: Path) -> None:
        os.kill(os.getpid(), signum)
        time.sleep(0.05)  # the signal has arrived; raised here, it would cut the write short
        torch.save({"weights": torch.ones(3)}, tmp)

    previous = signal.signal(signal.SIGUSR2, _exit_as_submitit_does)
    try:
        with sigterm_interrupts(), pytest.raises(Terminated if signum == signal.SIGTERM else SystemExit):
            replace_atomically(path, write)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert torch.equal(torch.load(path)["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["teacher.pt"]  # no temporary left


def test_an_exit_requested_by_a_scheduler_leaves_a_run_that_continues(tmp_path, reference):
    """submitit's handler for a preempted or timed-out SLURM job requeues it and calls sys.exit
    inside the training loop; the requeued job runs the same command into the same folder."""
    run = tmp_path / "run"
    script = tmp_path / "preemptible.py"
    script.write_text(
        "import signal, sys\n"
        "from kdrun.cli import main\n"
        "signal.signal(signal.SIGUSR2, lambda signum, frame: sys.exit(-1))  # as submitit's handler ends the job\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["train", *TINY, *TINY_SYNTHETIC, f"hydra.run.dir={run}", *LONG]
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kdrun_env())
    with killed_if_left(proc):
        _wait_for_rows(proc, run / "metrics.csv", "distilled", 30)
        proc.send_signal(signal.SIGUSR2)
        proc.communicate(timeout=30)
    status = read_status(run)
    assert status["status"] == "interrupted" and "to continue" in status["message"], status
    again = run_kdrun("train", f"hydra.run.dir={run}", *LONG, cwd=tmp_path, check=True)
    assert "resuming the distilled student" in again.stdout
    _assert_same_results(run, reference)


def test_a_folder_in_use_by_a_live_process_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    live = {"status": "running", "pid": os.getpid(), "host": socket.gethostname(), "config_hash": "x", "time": "now"}
    (run / "status.json").write_text(json.dumps(live))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- loss.temperature=8\n")
    result = run_kdrun("train", f"hydra.run.dir={run}", "loss.temperature=2", cwd=tmp_path)
    assert result.returncode == 2 and "in use" in result.stderr and str(os.getpid()) in result.stderr, result.stderr
    assert json.loads((run / "status.json").read_text()) == live  # the live run's files are left alone
    assert (run / ".hydra" / "overrides.yaml").read_text() == "- loss.temperature=8\n" and not (run / ".hydra" / "config.yaml").exists()


def test_an_unfinished_run_of_other_settings_is_refused_and_stays_resumable(tmp_path):
    run = tmp_path / "run"
    args = (f"hydra.run.dir={run}", "trainer.epochs=3", "trainer.checkpoint_every=1", "cache.enabled=false")
    run_kdrun("train", *args, "trainer.keep_checkpoints=true", cwd=tmp_path, check=True)
    status = read_status(run)
    (run / "status.json").write_text(json.dumps({**status, "status": "interrupted"}))  # as if stopped at the end
    (run / "summary.csv").unlink()

    before = {name: (run / name).read_bytes() for name in ("status.json", ".hydra/config.yaml", ".hydra/overrides.yaml")}
    other = run_kdrun("train", *args, "loss.alpha=0.2", cwd=tmp_path)
    assert other.returncode == 2, other.stderr
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and "other settings" in lines[0] and "trainer.epochs=3" in lines[0] and "checkpoints" in lines[0], other.stderr
    assert {name: (run / name).read_bytes() for name in before} == before  # its record stays its own (compare reads it)
    same = run_kdrun("train", *args, cwd=tmp_path, check=True)  # its own settings: continued, not refused
    assert "continuing" in same.stdout and read_status(run)["status"] == "completed"


def test_checkpoints_are_written_as_asked_and_removed_when_the_run_completes(tmp_path):
    def run(name: str, *args: str) -> Path:
        run_kdrun("train", f"hydra.run.dir={tmp_path / name}", "trainer.epochs=4", "cache.enabled=false", *args, cwd=tmp_path, check=True)
        return tmp_path / name

    kept = run("kept", "trainer.checkpoint_every=3", "trainer.keep_checkpoints=true")
    saved = {name: torch.load(kept / "checkpoints" / f"{name}.pt", weights_only=True) for name in ("teacher", "distilled", "baseline")}
    assert {name: state["epoch"] for name, state in saved.items()} == {"teacher": 4, "distilled": 4, "baseline": 4}  # and the last
    assert [row["epoch"] for row in saved["teacher"]["history"]] == [1, 2, 3, 4]
    assert not (run("default") / "checkpoints").exists()  # a short run with the default: none at all
    assert not (run("never", "trainer.checkpoint_every=0", "trainer.keep_checkpoints=true") / "checkpoints").exists()


def test_the_default_writes_at_most_one_checkpoint_a_minute(tmp_path):
    checkpoint = Checkpoint(tmp_path / "m.pt", None, "the teacher")
    assert not checkpoint.due(1, 10) and not checkpoint.due(10, 10)  # a model that trains in under a minute: none
    checkpoint._last_write -= AUTO_SECONDS  # a minute later
    assert checkpoint.due(2, 10)
    checkpoint.save({"epoch": 2})
    assert not checkpoint.due(3, 10)
    assert checkpoint.due(10, 10)  # the last epoch of a model that has written one
    every = Checkpoint(tmp_path / "e.pt", 3, "the teacher")
    assert [epoch for epoch in range(1, 8) if every.due(epoch, 7)] == [3, 6, 7]


def test_a_damaged_checkpoint_is_reported_and_the_model_trains_from_the_start(tmp_path, caplog):
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"not a checkpoint")
    assert Checkpoint(path, 1, "the teacher").load(torch.device("cpu")) is None
    assert "cannot read" in caplog.text and "first epoch" in caplog.text


# --------------------------------------------------------------------------- fit, in process


def _images(n: int, seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fit_continues_exactly_where_it_stopped(tmp_path, optimizer):
    """Every piece of state matters: weights, the optimiser's moments, the loss's own parameters
    (FitNet's regressor), the batch order and the dropout masks; report=best_val's best epoch."""
    train, val = _images(96, 0), _images(32, 1)
    torch.manual_seed(0)
    teacher = CNN((1, 8, 8), 3, channels=[4, 8], dropout=0.3)

    def fresh() -> tuple[torch.nn.Module, FitNetLoss]:
        torch.manual_seed(1)
        student, loss = CNN((1, 8, 8), 3, channels=[2, 4], dropout=0.3), FitNetLoss(hint_fraction=0.5)
        loss.setup(student, teacher, train.x[:16])
        torch.manual_seed(2)  # the dropout masks' generator, as kdrun seeds it before a student
        return student, loss

    settings = FitSettings(8, 16, optimizer, 1e-2, 1e-4, batch_seed=3, report="best_val")
    student, loss = fresh()
    whole = fit(student, train, val, settings, "distilled", Distillation(loss, teacher), checkpoint=Checkpoint(tmp_path / "a.pt", 0, "a"))

    class Stop(KeyboardInterrupt):
        pass

    def stop_at_epoch_6(row: dict) -> None:
        if row["epoch"] == 6:
            raise Stop

    student, loss = fresh()
    checkpoint = Checkpoint(tmp_path / "b.pt", 4, "b")
    with pytest.raises(Stop):
        fit(student, train, val, settings, "distilled", Distillation(loss, teacher), on_epoch=stop_at_epoch_6, checkpoint=checkpoint)
    student_again, loss_again = fresh()
    replayed = []
    resumed = fit(student_again, train, val, settings, "distilled", Distillation(loss_again, teacher), on_epoch=replayed.append, checkpoint=checkpoint)

    def without_time(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert without_time(resumed) == without_time(whole) and without_time(replayed) == without_time(whole)
    reference, _ = fresh()
    fit(reference, train, val, settings, "distilled", Distillation(fresh()[1], teacher))  # no checkpoint at all
    assert all(torch.equal(a, b) for a, b in zip(student_again.state_dict().values(), reference.state_dict().values()))


def test_a_students_checkpoint_is_not_continued_against_another_teacher(tmp_path, caplog):
    """A sweep's stacked teacher that was not cached is trained again, alone, when the sweep is
    rerun: equal only up to rounding. A distilled student stopped against the first teacher would
    end as a mix of two; it trains from its first epoch instead, with a warning."""
    from kdrun.checkpoints import weights_digest
    from kdrun.losses import KDLoss
    from kdrun.models import MLP

    train, val = Split(torch.randn(48, 6), torch.randint(0, 3, (48,))), Split(torch.randn(16, 6), torch.randint(0, 3, (16,)))
    torch.manual_seed(0)
    teacher = MLP((6,), 3, hidden=[8])
    other = MLP((6,), 3, hidden=[8])
    other.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        other.network[-1].bias.add_(1e-6)  # another teacher, by rounding
    settings = FitSettings(4, 16, "adam", 1e-2, 0.0, batch_seed=3)

    def stop_at_epoch_2(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        fit(MLP((6,), 3, hidden=[4]), train, val, settings, "distilled", Distillation(KDLoss(), teacher), on_epoch=stop_at_epoch_2,
            checkpoint=Checkpoint(tmp_path / "d.pt", 1, "the distilled student", weights_digest(teacher)))  # fmt: skip
    assert weights_digest(other) != weights_digest(teacher)
    replayed = []
    fit(MLP((6,), 3, hidden=[4]), train, val, settings, "distilled", Distillation(KDLoss(), other), on_epoch=replayed.append,
        checkpoint=Checkpoint(tmp_path / "d.pt", 1, "the distilled student", weights_digest(other)))  # fmt: skip
    assert [row["epoch"] for row in replayed] == [1, 2, 3, 4] and "trained against another teacher" in caplog.text
    assert "resuming" not in caplog.text


def test_an_unfinished_run_of_this_command_read_otherwise_is_refused_saying_so(tmp_path):
    """The same command, its digest changed (a teacher or config file changed, another kdrun
    version): 'run that command again to continue it' named the command just refused."""
    run = tmp_path / "run"
    run_kdrun("train", f"hydra.run.dir={run}", cwd=tmp_path, check=True)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "interrupted", "config_hash": "0" * 16}))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "teacher.pt").write_bytes(b"state")
    same = run_kdrun("train", f"hydra.run.dir={run}", cwd=tmp_path)
    assert same.returncode == 2 and "holds an unfinished run of this same command (" in same.stderr, same.stderr
    assert "whose settings came out otherwise" in same.stderr and "run that command again" not in same.stderr
    import kdrun
    from kdrun.errors import ConfigError

    with pytest.raises(ConfigError, match="holds an unfinished run of this same command"):  # kdrun.run's message too
        kdrun.run(status["overrides"], run_dir=run)


def test_a_checkpoint_of_other_shapes_is_not_continued(tmp_path, caplog):
    """FitNet's regressor gained batch norm: a checkpoint of the old one (written by an earlier
    kdrun) made resuming a traceback from load_state_dict. It trains from its first epoch instead."""
    train, val = _images(48, 0), _images(16, 1)
    torch.manual_seed(0)
    teacher = CNN((1, 8, 8), 3, channels=[4, 8])
    settings = FitSettings(4, 16, "adam", 1e-2, 0.0, batch_seed=3)

    def stop_at_epoch_2(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    old_loss = FitNetLoss()
    student = CNN((1, 8, 8), 3, channels=[2, 4])
    old_loss.setup(student, teacher, train.x[:16])
    old_loss.regressor = old_loss.regressor[0]  # the bare convolution of earlier versions
    with pytest.raises(KeyboardInterrupt):
        fit(student, train, val, settings, "distilled", Distillation(old_loss, teacher, set_up=True), on_epoch=stop_at_epoch_2,
            checkpoint=Checkpoint(tmp_path / "f.pt", 1, "the distilled student"))  # fmt: skip
    loss, student = FitNetLoss(), CNN((1, 8, 8), 3, channels=[2, 4])
    loss.setup(student, teacher, train.x[:16])
    rows = fit(student, train, val, settings, "distilled", Distillation(loss, teacher, set_up=True), checkpoint=Checkpoint(tmp_path / "f.pt", 1, "the distilled student"))
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4] and "holds weights of other shapes than this run's" in caplog.text
    from kdrun.train import _fits

    class WithBuffer(torch.nn.Module):  # stacks (no trainable parameters); a stack's checkpoint saves no loss state
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.ones(1))

    assert _fits({"model": student.state_dict(), "loss": None}, student, WithBuffer())  # was refused: {} against its buffer


# --------------------------------------------------------------------------- trainer.report


def test_best_val_reports_the_epoch_of_best_validation_accuracy(tmp_path):
    run = tmp_path / "run"
    run_kdrun(
        "train", f"hydra.run.dir={run}", "trainer.epochs=12", "trainer.lr=0.05", "trainer.report=best_val",
        "dataset.n_samples=400", "dataset.signal_scale=0.05", "cache.enabled=false", cwd=tmp_path, check=True,
    )  # fmt: skip
    metrics, summary = _rows(run / "metrics.csv"), _rows(run / "summary.csv")
    for row in summary:
        history = [r for r in metrics if r["model"] == row["model"]]
        best = max(float(r["val_acc"]) for r in history)
        first_best = next(r for r in history if float(r["val_acc"]) == best)
        assert row["epoch"] == first_best["epoch"], row["model"]
        # summary.csv's val_acc is measured on the final weights: they are the reported epoch's
        assert float(row["val_acc"]) == pytest.approx(float(first_best["val_acc"]))
    epochs = {row["model"]: int(row["epoch"]) for row in summary}
    assert min(epochs.values()) < 12, "every model's best epoch is its last: the test cannot tell best_val from last"


def test_reported_epoch():
    rows = [{"epoch": e, "val_acc": a} for e, a in enumerate([0.5, 0.8, 0.8, 0.7], start=1)]
    assert reported_epoch(rows, "last") == 4
    assert reported_epoch(rows, "best_val") == 2  # the first of the best
    assert reported_epoch([{"epoch": 1, "val_acc": float("nan")}, {"epoch": 2, "val_acc": float("nan")}], "best_val") == 2


def test_a_rerun_sweep_continues_its_unfinished_job_from_its_checkpoints(tmp_path):
    sweep = tmp_path / "sweep"
    # one job after the other (a stacked sweep's resumption: test_stacking.py)
    command = ("train", "-m", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job${hydra.job.num}", "hydra.launcher.stack=false", "loss.alpha=0.5,0.9", *LONG)
    with killed_if_left(start_kdrun(*command, cwd=tmp_path)) as proc:
        _wait_for_rows(proc, sweep / "job1" / "metrics.csv", "distilled", 30)
        proc.kill()  # the whole sweep, mid-job
        proc.communicate()
    assert read_status(sweep / "job0")["status"] == "completed" and read_status(sweep / "job1")["status"] == "running"

    again = run_kdrun(*command, cwd=tmp_path, check=True)
    assert "skipped" in again.stdout and "resuming the distilled student" in again.stdout, again.stdout
    rows = _rows(sweep / "job1" / "metrics.csv")
    for model in ("teacher", "distilled", "baseline"):
        assert [int(row["epoch"]) for row in rows if row["model"] == model] == list(range(1, 301))
    assert read_status(sweep / "job1")["status"] == "completed" and (sweep / "comparison.csv").is_file()


def test_ctrl_c_in_a_sweep_of_jobs_one_by_one_marks_the_jobs_not_started_interrupted(tmp_path):
    """They had a folder and no status.json: kdrun compare did not list them."""
    sweep = tmp_path / "sweep"
    command = ("train", "-m", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job${hydra.job.num}", "hydra.launcher.stack=false", "loss.alpha=0.3,0.5,0.9", *LONG)
    with killed_if_left(start_kdrun(*command, cwd=tmp_path)) as proc:
        _wait_for_rows(proc, sweep / "job0" / "metrics.csv", "teacher", 5)
        interrupt(proc, signal.SIGINT)
    statuses = {job: read_status(sweep / job) for job in ("job0", "job1", "job2")}
    assert [s["status"] for s in statuses.values()] == ["interrupted"] * 3, statuses
    assert "before this job started" in statuses["job2"]["message"] and "loss.alpha=0.9" in statuses["job2"]["overrides"]
    listed = subprocess.run([sys.executable, "-m", "kdrun", "compare", str(sweep), "--format", "csv"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 1 and "left out: 3 interrupted" in listed.stderr, listed.stderr


def test_a_checkpoint_of_format_1_resumes_where_it_stopped(tmp_path: Path) -> None:
    """Format 1 checkpoints hold a convolution weight's Adam moments in channels-last memory order
    under plain strides (tests/data holds one, of a CNN after epoch 2 of 3, written by kdrun 0.3.0
    from the code below). Resumed now, the run ends where an uninterrupted one does."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(72, 1, 8, 8, generator=g), torch.randint(0, 3, (72,), generator=g)
    train, val = Split(x[:48], y[:48]), Split(x[48:], y[48:])
    settings = FitSettings(epochs=3, batch_size=16, optimizer="adam", lr=1e-2, weight_decay=0.0, batch_seed=1)
    torch.manual_seed(0)
    whole = CNN((1, 8, 8), 3, [2, 4])
    expected = fit(whole, train, val, settings, "baseline")

    path = tmp_path / "cnn.pt"
    path.write_bytes((Path(__file__).parent / "data" / "cnn_adam_checkpoint_format1.pt").read_bytes())
    assert torch.load(path, weights_only=True)["format"] == 1
    torch.manual_seed(0)
    resumed = CNN((1, 8, 8), 3, [2, 4])
    rows = fit(resumed, train, val, settings, "baseline", checkpoint=Checkpoint(path, 2, "the CNN"))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
        assert rows[-1][key] == pytest.approx(expected[-1][key], rel=1e-6), key
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, whole.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)
