"""Stacked training: the students of a sweep trained as one (kdrun.stacking, kdrun.groups).

What a user relies on: a job trained with others gives the results it gives alone (up to
rounding), a NaN in one student stops that student alone, and an interrupted stacked sweep is
marked interrupted job by job and continues when run again, with no epoch repeated or dropped.
"""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
import yaml
import torch.nn.functional as F

from kdrun.data import Split
from kdrun.errors import ConfigError, NonFiniteLossError
from kdrun.losses import DKDLoss, KDLoss
from kdrun.models import CNN, MLP, LeNet5
from kdrun.run_files import read_status
from kdrun.stacking import Member, fit_stacked, stack_reason
from kdrun.train import Distillation, FitSettings, fit, predict

TINY = ["trainer.epochs=3", "dataset.n_samples=120", "model.teacher.hidden=[16]", "model.student.hidden=[8]", "plots=false"]
TINY_CNN = ["trainer.epochs=3", "dataset=digits", "dataset.transfer_size=0.2", "model/teacher=cnn", "model/student=cnn",
            "model.teacher.channels=[4]", "model.student.channels=[2,3]", "plots=false"]  # fmt: skip


def _data(n: int = 96, features: int = 12, classes: int = 4) -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n + 24, features, generator=g), torch.randint(0, classes, (n + 24,), generator=g)
    return Split(x[:n], y[:n]), Split(x[n:], y[n:])


def _seeded_state(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


@pytest.mark.parametrize("optimizer, loss_class", [("adam", KDLoss), ("sgd", DKDLoss)])
def test_stacked_students_train_as_they_do_alone(optimizer: str, loss_class: type) -> None:
    """Two seeds (own initial weights, batches, dropout masks, teacher) x two loss settings, and
    each seed's baseline, stacked: every epoch's losses within 1e-5 of the same student trained
    alone by ``fit``, and the same weights. KD is computed for the whole stack at once, DKD
    student by student."""
    train, val = _data()
    settings = FitSettings(epochs=3, batch_size=16, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-2, weight_decay=1e-4, batch_seed=0)
    teachers, initial = {}, {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        teachers[seed] = MLP((12,), 4, [20]).eval()
        initial[seed] = MLP((12,), 4, [10, 6], dropout=0.2)
    jobs = [(seed, setting) for seed in (0, 1) for setting in (1.0, 4.0)]

    def make_loss(setting: float):
        return KDLoss(alpha=0.6, temperature=setting) if loss_class is KDLoss else DKDLoss(beta=setting, temperature=2.0, warmup_epochs=2)

    alone = []
    for seed, setting in jobs:
        model = copy.deepcopy(initial[seed])
        torch.manual_seed(seed + 2)
        alone.append((model, fit(model, train, val, _with_seed(settings, seed + 1), "distilled", Distillation(make_loss(setting), teachers[seed]))))
    for seed in (0, 1):
        model = copy.deepcopy(initial[seed])
        torch.manual_seed(seed + 2)
        alone.append((model, fit(model, train, val, _with_seed(settings, seed + 1), "baseline")))

    members = []
    for seed, setting in jobs:
        loss = make_loss(setting)
        targets = loss.teacher_targets(predict(teachers[seed], train.x)) if hasattr(loss, "teacher_targets") else predict(teachers[seed], train.x)
        members.append(Member("distilled", copy.deepcopy(initial[seed]), seed + 1, _seeded_state(seed + 2), loss, targets))
    members += [Member("baseline", copy.deepcopy(initial[seed]), seed + 1, _seeded_state(seed + 2)) for seed in (0, 1)]
    rng_before = torch.get_rng_state()
    fit_stacked(members, train, val, settings, lambda x: x)

    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's random state is left alone
    for (model, rows), member in zip(alone, members):
        assert member.error is None and [r["epoch"] for r in member.history] == [1, 2, 3]
        assert member.history[0].keys() == rows[0].keys()
        for mine, theirs in zip(member.history, rows):
            for key in mine:
                if key not in ("model", "epoch", "seconds"):
                    assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), (member.name, key)
        for stacked, single in zip(member.model.parameters(), model.parameters()):
            torch.testing.assert_close(stacked, single, rtol=1e-4, atol=1e-6)


def _sequential_cnn() -> torch.nn.Sequential:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.GELU(), nn.Conv2d(3, 4, 3, padding=1, groups=1, bias=False),
        nn.AvgPool2d(2), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(4, 4),
    )  # fmt: skip


@pytest.mark.parametrize("architecture", ["cnn", "lenet5", "sequential"])
def test_stacked_convolutional_students_train_as_they_do_alone(architecture: str) -> None:
    """CNN students with batch norm and dropout (each keeps its own running statistics), LeNet-5
    students and a Sequential of strided convolutions, batch norm and pooling, of two seeds x two
    temperatures, and each seed's baseline: the first epoch within 1e-5 of the student trained
    alone, later ones within 1e-3 (a grouped convolution rounds otherwise), and the same weights
    and running statistics."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 1, 12, 12, generator=g), torch.randint(0, 4, (120,), generator=g)
    train, val = Split(x[:96], y[:96]), Split(x[96:], y[96:])
    make = {"cnn": lambda: CNN((1, 12, 12), 4, [4, 6], dropout=0.2), "lenet5": lambda: LeNet5((1, 12, 12), 4), "sequential": _sequential_cnn}[architecture]
    settings = FitSettings(epochs=3, batch_size=16, optimizer="adam", lr=1e-2, weight_decay=1e-4, batch_seed=0)
    teachers, initial = {}, {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        teachers[seed], initial[seed] = make().eval(), make()
    alone, members = [], []
    for seed, temperature in [(0, 1.0), (0, 4.0), (1, 1.0), (1, 4.0), (0, None), (1, None)]:
        model = copy.deepcopy(initial[seed])
        distillation = Distillation(KDLoss(0.6, temperature), teachers[seed]) if temperature else None
        torch.manual_seed(seed + 2)
        alone.append((model, fit(model, train, val, _with_seed(settings, seed + 1), "distilled" if temperature else "baseline", distillation)))
        loss = KDLoss(0.6, temperature) if temperature else None
        targets = loss.teacher_targets(predict(teachers[seed], train.x)) if loss else None
        members.append(Member("distilled" if loss else "baseline", copy.deepcopy(initial[seed]), seed + 1, _seeded_state(seed + 2), loss, targets))
    fit_stacked(members, train, val, settings, lambda x: x)

    for (model, rows), member in zip(alone, members):
        assert member.error is None and [r["epoch"] for r in member.history] == [1, 2, 3]
        for mine, theirs in zip(member.history, rows):
            for key in mine.keys() - {"model", "epoch", "seconds"}:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-5 if mine["epoch"] == 1 else 1e-3, abs=1e-7), (member.name, key)
        mine, theirs = member.model.state_dict(), model.state_dict()
        assert mine.keys() == theirs.keys()
        for name in mine:
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-3, atol=1e-4, msg=name)  # running_mean, num_batches_tracked...


def test_a_stack_predicts_in_chunks_what_each_model_predicts_alone(monkeypatch) -> None:
    """In eval mode (batch norm's running statistics, each model's own), in chunks of rows whose
    rows x models stay within one model's evaluation chunk: 2 rows at a time here."""
    from kdrun import stacking

    monkeypatch.setattr(stacking, "EVAL_BATCH", 8)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = CNN((1, 8, 8), 3, [2, 4])
        model(torch.randn(16, 1, 8, 8))  # train mode: running statistics of its own
        models.append(model)
    x = torch.randn(20, 1, 8, 8)
    logits = stacking.StackedModels(models).predict(x, lambda rows: rows)
    for k, model in enumerate(models):
        torch.testing.assert_close(logits[k], predict(model, x))


def _with_seed(settings: FitSettings, seed: int) -> FitSettings:
    return FitSettings(**{**settings.__dict__, "batch_seed": seed})


class _NaNFrom:
    """Cross-entropy that turns NaN after ``after_calls`` batches."""

    def __init__(self, after_calls: int) -> None:
        self.calls, self.after_calls = 0, after_calls

    def __call__(self, logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = F.cross_entropy(logits, labels)
        return loss * math.nan if self.calls > self.after_calls else loss


def test_a_nan_stops_that_student_alone() -> None:
    train, val = _data()
    settings = FitSettings(epochs=3, batch_size=16, optimizer="adam", lr=1e-2, weight_decay=0.0, batch_seed=1)
    torch.manual_seed(0)
    initial = MLP((12,), 4, [10])
    logits = torch.zeros(len(train), 4)
    members = [Member("distilled", copy.deepcopy(initial), 1, _seeded_state(2), _NaNFrom(6 if i == 1 else 10**9), logits) for i in range(3)]
    fit_stacked(members, train, val, settings, lambda x: x)

    broken = members[1]
    assert isinstance(broken.error, NonFiniteLossError) and "epoch 2 of 3" in str(broken.error)  # 6 batches an epoch
    assert [r["epoch"] for r in broken.history] == [1]  # the epoch whose loss was NaN is not recorded, as alone
    for member in (members[0], members[2]):
        assert member.error is None and [r["epoch"] for r in member.history] == [1, 2, 3]
        assert all(torch.isfinite(p).all() for p in member.model.parameters())
    assert members[0].history[-1]["train_loss"] == pytest.approx(members[2].history[-1]["train_loss"], rel=1e-6)


def _huge_gradient(logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels) * 1e30  # finite, but one SGD step sends the weights to ~1e28


def test_weights_broken_by_an_epochs_last_step_stop_that_model_though_its_training_loss_was_finite() -> None:
    """The training loss is read before each step: a run whose last step broke the weights
    finished as completed, with an empty val and test NLL. The validation loss now stops it."""
    train, val = _data()
    settings = FitSettings(epochs=2, batch_size=len(train), optimizer="sgd", lr=1e-2, weight_decay=0.0, batch_seed=1)  # one step an epoch
    with pytest.raises(NonFiniteLossError, match="distilled: validation loss is nan at epoch 1 of 2"):
        fit(MLP((12,), 4, [10]), train, val, settings, "distilled", Distillation(_huge_gradient, MLP((12,), 4, [10])))
    torch.manual_seed(0)
    initial, logits = MLP((12,), 4, [10]), torch.zeros(len(train), 4)
    members = [Member("distilled", copy.deepcopy(initial), 1, _seeded_state(2), loss, logits) for loss in (_NaNFrom(10**9), _huge_gradient)]
    fit_stacked(members, train, val, settings, lambda x: x)
    assert members[0].error is None and [r["epoch"] for r in members[0].history] == [1, 2]
    assert "validation loss is nan at epoch 1 of 2" in str(members[1].error) and members[1].history == []


def _no_gradient(logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels).detach()


def test_a_loss_without_gradient_in_a_stack_is_a_users_mistake_not_an_untrained_student() -> None:
    """Summed with the others' losses, a member's detached loss still gave the stack a gradient,
    and its student silently never learnt (a review found such a job 'completed')."""
    train, val = _data()
    settings = FitSettings(epochs=1, batch_size=16, optimizer="adam", lr=1e-2, weight_decay=0.0, batch_seed=1)
    logits = torch.zeros(len(train), 4)
    members = [Member("distilled", MLP((12,), 4, [10]), 1, _seeded_state(2), loss, logits) for loss in (_NaNFrom(10**9), _no_gradient)]
    with pytest.raises(ConfigError, match="no gradient"):
        fit_stacked(members, train, val, settings, lambda x: x)


def test_what_does_not_stack_says_why(tmp_path: Path) -> None:
    assert stack_reason(MLP((12,), 4, [8], dropout=0.1)) is None
    assert stack_reason(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))) is None
    reason = stack_reason(torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4)))
    assert reason is not None and "BatchNorm1d" in reason
    assert stack_reason(CNN((1, 8, 8), 4, [4, 8], dropout=0.2)) is None and stack_reason(LeNet5((1, 12, 12), 4)) is None
    nn = torch.nn
    maps = [nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2)]
    assert stack_reason(nn.Sequential(*maps, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))) is None
    assert "Dropout2d layer on feature maps" in stack_reason(nn.Sequential(*maps, nn.Dropout2d(0.1), nn.Flatten(), nn.Linear(16, 3)))
    assert "Conv2d layer on flat features" in stack_reason(nn.Sequential(nn.Flatten(), nn.Conv2d(1, 4, 3)))
    assert "Dropout layer before any Linear" in stack_reason(nn.Sequential(nn.Dropout(0.3), nn.Flatten(), nn.Linear(32, 3)))  # its masks: [B, C, H, W]
    assert "without affine weights" in stack_reason(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=None)))
    hooked = MLP((12,), 4, [8])
    hooked.network[1].register_forward_hook(lambda module, args, output: None)  # as a loss's setup may, to read a layer
    assert "forward hooks" in stack_reason(hooked)  # a stacked model never calls them: the loss would read stale features

    from kdrun import groups
    from kdrun.config import compose

    def configs(*common: str, base: tuple = tuple(TINY), key: str = "loss.alpha") -> list:
        return [compose([*base, f"cache.dir={tmp_path}", *common, f"{key}={value}"]) for value in (0.3, 0.9)]

    images = ("trainer.epochs=1", "plots=false", "dataset=digits", "model/teacher=cnn")
    resnets = configs("model/student=resnet8", base=images)
    assert groups.plan(resnets)[0] == [[0, 1]]  # same settings but alpha: a group, until its models are built
    with pytest.raises(groups.Unstackable, match="model.student: CifarResNet is not a kdrun MLP, CNN or LeNet5"):
        groups.train_group(resnets, [tmp_path / "a", tmp_path / "b"], 2048)
    from kdrun.experiment import prepare

    assert "reads the models' features" in groups.loss_reason(prepare(configs("loss=at", "model/student=cnn", base=images, key="loss.beta")[0]).loss)
    assert groups.loss_reason(prepare(configs()[0]).loss) is None
    groups_, alone = groups.plan([*configs(), *configs("dataset.augment=true", base=images), compose([*TINY, "trainer.lr=0.1"])])
    assert groups_ == [[0, 1]] and "dataset.augment" in alone[2] and "loss's settings or the seed" in alone[4]


def test_a_linear_without_bias_stacks() -> None:
    train, val = _data()
    settings = FitSettings(epochs=2, batch_size=16, optimizer="adam", lr=1e-2, weight_decay=0.0, batch_seed=1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8, bias=False), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    alone = copy.deepcopy(model)
    rows = fit(alone, train, val, settings, "baseline")
    member = Member("baseline", copy.deepcopy(model), 1, _seeded_state(2))
    fit_stacked([member], train, val, settings, lambda x: x)
    assert member.history[-1]["train_loss"] == pytest.approx(rows[-1]["train_loss"], rel=1e-5)


# --------------------------------------------------------------------------- whole sweeps


def _sweep(tmp_path: Path, name: str, *extra: str, base: list[str] = TINY) -> int:
    from kdrun import app

    return app.main(["-m", *base, f"hydra.sweep.dir={tmp_path / name}", f"cache.dir={tmp_path / name / 'cache'}",
                     "trainer.checkpoint_every=1", "loss.alpha=0.3,0.9", "loss.temperature=1,4", *extra])  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_stacked_sweep_of_two_seeds_on_the_gpu_matches_one_by_one(tmp_path: Path, monkeypatch) -> None:
    """The second seed's models are built beside data the first seed moved to the GPU."""
    monkeypatch.chdir(tmp_path)
    for name, launcher in (("stacked", "hydra.launcher.stack=true"), ("alone", "hydra.launcher.stack=false")):
        assert _sweep(tmp_path, name, launcher, "trainer.device=cuda", "trainer.seed=0,1", base=TINY_CNN) == 0
    for job, reference in zip(_jobs(tmp_path / "stacked"), _jobs(tmp_path / "alone")):
        first = [float(r["train_loss"]) for r in _metrics(job) if r["epoch"] == "1"]
        assert first == pytest.approx([float(r["train_loss"]) for r in _metrics(reference) if r["epoch"] == "1"], rel=1e-4)


def test_a_stack_size_of_no_memory_is_one_message(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert _sweep(tmp_path, "bad", "hydra.launcher.stack_mb=-5") == 2
    err = capsys.readouterr().err
    assert "hydra.launcher.stack_mb=-5.0 is not allowed" in err and "Traceback" not in err
    assert not list((tmp_path / "bad").glob("*/status.json"))


def _metrics(job: Path) -> list[dict]:
    with open(job / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _summary(job: Path) -> dict[str, dict]:
    with open(job / "summary.csv", newline="") as handle:
        return {row["model"]: row for row in csv.DictReader(handle)}


def _jobs(sweep: Path) -> list[Path]:
    return sorted((p.parent for p in sweep.glob("*/status.json")), key=lambda p: int(p.name.split("_")[0]))


def test_jobs_that_train_alone_reuse_the_teacher_and_baseline_their_seed_trained_in_a_stack(tmp_path: Path, monkeypatch) -> None:
    """loss=kd stacks (both seeds' teachers, then the students), loss=at trains alone: each seed's
    at job gets the very teacher and baseline the stack trained, from the cache, so the methods
    are compared against the same ones."""
    from kdrun import app

    monkeypatch.chdir(tmp_path)
    cnn = [o for o in TINY_CNN if not o.startswith("model.teacher.channels")] + ["model.teacher.channels=[4,6]"]
    assert app.main(["-m", *cnn, f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache.dir={tmp_path / 'cache'}", "loss=kd,at", "trainer.seed=0,1"]) == 0
    jobs = {tuple(o.split("=")[1] for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) if o.startswith(("loss=", "trainer.seed="))): job
            for job in _jobs(tmp_path / "sweep")}  # fmt: skip
    for seed in ("0", "1"):
        stacked, alone = (_summary(jobs[(loss, seed)]) for loss in ("kd", "at"))
        for model in ("teacher", "baseline"):
            assert alone[model]["source"] == "cached" and alone[model]["test_acc"] == stacked[model]["test_acc"], (seed, model)
        curves = [[(r["epoch"], r["train_loss"], r["val_loss"]) for r in _metrics(jobs[(loss, seed)]) if r["model"] == "baseline"] for loss in ("kd", "at")]
        assert curves[0] == curves[1] and len(curves[0]) == 3


@pytest.mark.parametrize("base, stack_mb", [(TINY, 0.3), (TINY_CNN, 0.5)], ids=["mlp", "cnn"])
def test_a_stacked_sweep_matches_one_by_one_and_resumes_after_an_interruption(tmp_path: Path, monkeypatch, capsys, base, stack_mb) -> None:
    """The same 2 x 2 sweep by Hydra's basic launcher (one job after the other), by kdrun's
    (trained together), and by kdrun's stopped by Ctrl-C in the stacked training's second epoch,
    then run again: MLP students, and CNN students with batch norm."""
    monkeypatch.chdir(tmp_path)
    assert _sweep(tmp_path, "basic", "hydra/launcher=basic", base=base) == 0
    assert _sweep(tmp_path, "stacked", f"hydra.launcher.stack_mb={stack_mb}", base=base) == 0  # a stack of 2 students at most
    assert "training 5 students together (4 distilled, 1 baseline) in 3 stacks of at most 2" in capsys.readouterr().out

    from kdrun import stacking

    real_end_epoch = stacking._end_epoch

    def stopped_after_epoch_2(*args, **kwargs):
        real_end_epoch(*args, **kwargs)
        if args[3] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(stacking, "_end_epoch", stopped_after_epoch_2)
    assert _sweep(tmp_path, "stopped", base=base) == 130
    for job in _jobs(tmp_path / "stopped"):
        status = read_status(job)
        assert status["status"] == "interrupted" and "run the same command again" in status["message"], status
        assert (job / "checkpoints" / "distilled.pt").is_file() and not (job / "summary.csv").exists()
        assert [r["epoch"] for r in _metrics(job) if r["model"] == "distilled"] == ["1", "2"]  # metrics.csv grew meanwhile
    monkeypatch.setattr(stacking, "_end_epoch", real_end_epoch)
    capsys.readouterr()
    assert _sweep(tmp_path, "stopped", base=base) == 0
    assert capsys.readouterr().out.count("resuming the distilled student at epoch 3 of 3") == 4  # from the stacked checkpoints

    for stacked in ("stacked", "stopped"):
        for job, reference in zip(_jobs(tmp_path / stacked), _jobs(tmp_path / "basic")):
            assert job.name == reference.name and read_status(job)["status"] == "completed"
            rows, expected = _metrics(job), _metrics(reference)
            assert [(r["model"], r["epoch"]) for r in rows] == [(r["model"], r["epoch"]) for r in expected]  # no epoch repeated or dropped
            for row, other in zip(rows, expected):
                for key in ("train_loss", "val_loss"):
                    assert float(row[key]) == pytest.approx(float(other[key]), rel=1e-5), (stacked, job.name, row["model"], key)
            with open(job / "summary.csv", newline="") as a, open(reference / "summary.csv", newline="") as b:
                for mine, theirs in zip(csv.DictReader(a), csv.DictReader(b)):
                    assert abs(float(mine["test_acc"]) - float(theirs["test_acc"])) <= 0.01


def _ctrl_c_at_second_call(function):
    """``function``, but its second call raises KeyboardInterrupt, as Ctrl-C there would."""
    calls = []

    def stopped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return function(*args, **kwargs)

    return stopped


def test_a_sweep_stopped_after_its_students_trained_together_marks_every_job_left_interrupted(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C while the second job writes its files: the jobs after it, whose students had trained
    with the others (their status said running), say interrupted too; run again, the sweep
    finishes with the results of a sweep that was not stopped."""
    monkeypatch.chdir(tmp_path)
    assert _sweep(tmp_path, "whole") == 0

    from kdrun import experiment

    real_write = experiment._write_run_files
    monkeypatch.setattr(experiment, "_write_run_files", _ctrl_c_at_second_call(real_write))  # in the second job
    assert _sweep(tmp_path, "stopped") == 130
    statuses = [read_status(job) for job in _jobs(tmp_path / "stopped")]
    assert [s["status"] for s in statuses] == ["completed", "interrupted", "interrupted", "interrupted"]
    for status in statuses[2:]:
        assert status["signal"] == "SIGINT" and f"hydra.sweep.dir={tmp_path / 'stopped'}" in status["message"], status
        assert status["config_hash"] and status["overrides"], status
    monkeypatch.setattr(experiment, "_write_run_files", real_write)
    assert _sweep(tmp_path, "stopped") == 0
    for job, reference in zip(_jobs(tmp_path / "stopped"), _jobs(tmp_path / "whole")):
        assert read_status(job)["status"] == "completed"
        rows, expected = _metrics(job), _metrics(reference)
        assert [(r["model"], r["epoch"]) for r in rows] == [(r["model"], r["epoch"]) for r in expected]  # no epoch repeated or dropped
        assert [float(r["val_loss"]) for r in rows] == pytest.approx([float(r["val_loss"]) for r in expected], rel=1e-5)  # another stack: rounding


def test_a_student_that_failed_before_ctrl_c_says_failed_not_interrupted(tmp_path: Path, monkeypatch) -> None:
    """T=1e20 makes one student's loss NaN at its first epoch; Ctrl-C comes in the second, while
    the other trains on. The failed job said interrupted, its NaN message lost until a rerun."""
    from kdrun import app
    from kdrun.run_files import MetricsLog

    monkeypatch.chdir(tmp_path)
    appended = []
    real_append = MetricsLog.append

    def append(log, rows):
        appended.append(1)
        if len(appended) == 12:  # 2 jobs x 3 teacher epochs, then 3 rows of the students' first epoch: in the second
            raise KeyboardInterrupt
        real_append(log, rows)

    monkeypatch.setattr(MetricsLog, "append", append)
    code = app.main(["-m", *TINY, "trainer.student_epochs=6", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache.dir={tmp_path / 'cache'}",
                     "loss.temperature=1,1e20"])  # fmt: skip
    assert code == 130
    healthy, broken = (read_status(job) for job in _jobs(tmp_path / "sweep"))
    assert healthy["status"] == "interrupted" and healthy["signal"] == "SIGINT", healthy
    assert broken["status"] == "failed" and broken["exit_code"] == 1, broken
    assert "distilled: the training loss's part 'soft_loss' is nan at epoch 1 of 6" in broken["message"], broken
    assert broken["config_hash"] and "loss.temperature=1e+20" in broken["overrides"], broken


def test_a_teacher_that_failed_before_ctrl_c_fails_its_seeds_jobs(tmp_path: Path, monkeypatch) -> None:
    """Two seeds' teachers train stacked; seed 0's stops with a NaN at epoch 1 (set here: no setting
    makes one seed's teacher alone diverge), Ctrl-C comes at epoch 2."""
    from kdrun import app, stacking

    real_end_epoch = stacking._end_epoch

    def end_epoch(members, stack, losses, epoch, settings, *args, **kwargs):
        real_end_epoch(members, stack, losses, epoch, settings, *args, **kwargs)
        if members[0].name == "teacher" and epoch == 1:
            members[0].error = NonFiniteLossError("teacher", epoch, settings.epochs, math.nan)
        if members[0].name == "teacher" and epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stacking, "_end_epoch", end_epoch)
    code = app.main(["-m", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache.dir={tmp_path / 'cache'}", "trainer.seed=0,1"])
    assert code == 130
    statuses = [read_status(job) for job in _jobs(tmp_path / "sweep")]
    assert [s["status"] for s in statuses] == ["failed", "interrupted"], statuses
    assert statuses[0]["message"].startswith("teacher: training loss is nan at epoch 1 of 3"), statuses[0]


def test_a_job_whose_stacked_student_failed_says_failed_when_ctrl_c_comes_before_it_runs(tmp_path: Path, monkeypatch) -> None:
    from kdrun import app, experiment

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(experiment, "_write_run_files", _ctrl_c_at_second_call(experiment._write_run_files))  # in the second job
    code = app.main(["-m", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache.dir={tmp_path / 'cache'}", "loss.temperature=1,3,1e20"])
    assert code == 130
    statuses = [read_status(job) for job in _jobs(tmp_path / "sweep")]
    assert [s["status"] for s in statuses] == ["completed", "interrupted", "failed"], statuses
    assert "'soft_loss' is nan at epoch 1 of 3" in statuses[2]["message"] and statuses[2]["config_hash"], statuses[2]


def test_jobs_stopped_in_a_sweep_keep_the_digest_of_their_teacher_file(tmp_path: Path, monkeypatch) -> None:
    """kdrun compare keeps runs of different teacher files apart by status.json's teacher_sha256;
    a job left interrupted must keep it, or it would stand apart from its own configuration."""
    monkeypatch.chdir(tmp_path)
    from kdrun import app, experiment
    from kdrun.config import file_digest

    assert app.main([*TINY, f"hydra.run.dir={tmp_path / 'teacher'}", f"cache.dir={tmp_path / 'cache'}"]) == 0
    teacher = tmp_path / "teacher" / "teacher.pt"
    monkeypatch.setattr(experiment, "_write_run_files", _ctrl_c_at_second_call(experiment._write_run_files))
    assert _sweep(tmp_path, "stopped", f"model.teacher.checkpoint={teacher}") == 130
    statuses = [read_status(job) for job in _jobs(tmp_path / "stopped")]
    assert [s["status"] for s in statuses] == ["completed", "interrupted", "interrupted", "interrupted"]
    assert {s.get("teacher_sha256") for s in statuses} == {file_digest(teacher)}


def test_a_sweep_stopped_while_its_second_group_trains_marks_the_first_groups_jobs_interrupted(tmp_path: Path, monkeypatch) -> None:
    """Two learning rates, two groups: Ctrl-C while the second trains leaves no job saying running."""
    monkeypatch.chdir(tmp_path)
    from kdrun import groups

    monkeypatch.setattr(groups, "train_group", _ctrl_c_at_second_call(groups.train_group))
    assert _sweep(tmp_path, "stopped", "trainer.lr=0.001,0.01") == 130
    statuses = [read_status(job) for job in _jobs(tmp_path / "stopped")]
    assert [s["status"] for s in statuses] == ["interrupted"] * 8, statuses

    from kdrun.compare import collect

    runs = collect([tmp_path / "stopped"], "test_acc").runs  # none reached Hydra's run_job, which writes .hydra/
    assert len(runs) == 8 and {run.status for run in runs} == {"interrupted"}
    assert sorted(run.settings["trainer.lr"] for run in runs) == ["0.001"] * 4 + ["0.01"] * 4


def _nan_part(logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    loss = F.cross_entropy(logits, labels)
    return {"loss": loss, "diagnostic": loss * math.nan}


def test_a_nan_in_a_named_part_of_the_loss_stops_that_student_alone_and_names_the_part() -> None:
    """The total was finite, so the part's NaN went into metrics.csv as an empty cell."""
    train, val = _data()
    settings = FitSettings(epochs=2, batch_size=16, optimizer="adam", lr=1e-2, weight_decay=0.0, batch_seed=1)
    logits = torch.zeros(len(train), 4)
    with pytest.raises(NonFiniteLossError, match="the training loss's part 'diagnostic' is nan at epoch 1 of 2"):
        fit(MLP((12,), 4, [10]), train, val, settings, "distilled", Distillation(_nan_part, MLP((12,), 4, [10])))
    members = [Member("distilled", MLP((12,), 4, [10]), 1, _seeded_state(2), loss, logits) for loss in (_NaNFrom(10**9), _nan_part)]
    fit_stacked(members, train, val, settings, lambda x: x)
    assert members[0].error is None and "'diagnostic' is nan" in str(members[1].error)


def _nan_soft_part(logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    hard, soft = F.cross_entropy(logits, labels), logits.sum() * math.inf * 0
    return {"loss": hard + soft, "soft_loss": soft, "hard_loss": hard}


def test_a_part_that_makes_the_total_non_finite_is_named() -> None:
    """loss.temperature=1e20 overflows the soft term: the message named only the total."""
    train, val = _data()
    settings = FitSettings(epochs=2, batch_size=16, optimizer="adam", lr=1e-2, weight_decay=0.0, batch_seed=1)
    with pytest.raises(NonFiniteLossError, match="the training loss's part 'soft_loss' is nan at epoch 1"):
        fit(MLP((12,), 4, [10]), train, val, settings, "distilled", Distillation(_nan_soft_part, MLP((12,), 4, [10])))
    members = [Member("distilled", MLP((12,), 4, [10]), 1, _seeded_state(2), _nan_soft_part, torch.zeros(len(train), 4))]
    fit_stacked(members, train, val, settings, lambda x: x)
    assert "part 'soft_loss' is nan at epoch 1" in str(members[0].error)
