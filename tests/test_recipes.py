"""Training recipes: learning-rate schedules, SGD, mixed precision, augmentation pairing, a
teacher trained elsewhere, and data kept as uint8."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import has_traceback, run_kdrun

from kdrun.config import file_digest
from kdrun.data import Split
from kdrun.models import CNN, MLP
from kdrun.optim import learning_rate
from kdrun.run_files import read_status
from kdrun.train import Distillation, FitSettings, fit


def _summary(run: Path) -> dict[str, dict]:
    with open(run / "summary.csv", newline="") as handle:
        return {row["model"]: row for row in csv.DictReader(handle)}


# --------------------------------------------------------------------------- schedules


def test_multistep_drops_after_each_milestone_as_the_benchmarks_do():
    rates = [learning_rate(0.05, epoch, 240, "multistep", [150, 180, 210], 0.1) for epoch in range(1, 241)]
    assert rates[149] == 0.05 and rates[150] == pytest.approx(0.005)  # epoch 150, then 151
    assert rates[180] == pytest.approx(0.0005) and rates[239] == pytest.approx(0.00005)


def test_cosine_falls_from_lr_towards_zero_after_a_linear_warm_up():
    rates = [learning_rate(0.1, epoch, 10, "cosine", warmup_epochs=2) for epoch in range(1, 11)]
    assert rates[:2] == pytest.approx([0.05, 0.1])
    assert rates[2] == pytest.approx(0.1) and all(a > b for a, b in zip(rates[2:], rates[3:]))
    assert rates[-1] == pytest.approx(0.1 * (1 + math.cos(math.pi * 7 / 8)) / 2)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_applies_the_schedule(optimizer):
    """After a milestone with gamma 1e-9 the weights barely move: the schedule reaches the optimiser."""
    generator = torch.Generator().manual_seed(0)
    train = Split(torch.randn(64, 5, generator=generator), torch.randint(0, 3, (64,), generator=generator))
    torch.manual_seed(0)
    model = MLP((5,), 3, [8])
    def weights() -> torch.Tensor:
        return torch.cat([p.detach().flatten().clone() for p in model.parameters()])

    snapshots = [weights()]
    settings = FitSettings(3, 16, optimizer, 0.1, 0.0, 0, scheduler="multistep", milestones=[1], gamma=1e-9, nesterov=optimizer == "sgd")
    fit(model, train, train, settings, "m", on_epoch=lambda row: snapshots.append(weights()))
    first, later = (snapshots[0] - snapshots[1]).abs().max(), (snapshots[1] - snapshots[2]).abs().max()
    assert first > 1e-3 and later < 1e-6, (first, later)


# --------------------------------------------------------------------------- precision and settings


def test_bf16_trains_on_the_cpu(tmp_path):
    run = tmp_path / "run"
    run_kdrun("train", f"hydra.run.dir={run}", "trainer.precision=bf16", "trainer.epochs=5", cwd=tmp_path, check=True)
    summary = _summary(run)
    assert float(summary["teacher"]["train_acc"]) > 0.5 and math.isfinite(float(summary["distilled"]["test_nll"]))


def test_compiled_training_matches_eager_training():
    """trainer.compile=true: the same losses as eager training, up to float rounding; the module
    (not the compiled wrapper) keeps the trained weights."""
    generator = torch.Generator().manual_seed(0)
    train = Split(torch.randn(96, 1, 6, 6, generator=generator), torch.randint(0, 3, (96,), generator=generator))
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = CNN((1, 6, 6), 3, [4])
        settings = FitSettings(2, 32, "sgd", 0.1, 0.0, 0, compile=compiled)
        runs[compiled] = (fit(model, train, train, settings, "m"), model.state_dict())
    (eager, eager_weights), (compiled, compiled_weights) = runs[False], runs[True]
    assert [row["train_loss"] for row in compiled] == pytest.approx([row["train_loss"] for row in eager], rel=1e-4)
    assert eager_weights.keys() == compiled_weights.keys()


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("trainer.precision=16", ["trainer.precision=16", "CUDA", "bf16"]),
        ("trainer.precision=8", ["trainer.precision", "32, bf16, 16"]),
        ("trainer.scheduler=step", ["trainer.scheduler", "multistep"]),
        ("trainer.milestones=[180,150]", ["trainer.milestones", "increasing"]),
        ("trainer.scheduler=multistep", ["trainer.milestones=[]", "with scheduler=multistep"]),  # would never drop
        ("trainer.momentum=1.5", ["trainer.momentum", "[0, 1)"]),
        ("trainer.warmup_epochs=21", ["trainer.warmup_epochs=21", "the students' epochs", "never reach"]),  # the lr would never reach lr
        ("loss=dkd loss.warmup_epochs=3 trainer.student_epochs=2", ["loss.warmup_epochs=3", "at most 2, the students' epochs"]),
        ("dataset.augment=true", ["dataset.augment", "images"]),
    ],
)
def test_bad_training_settings_are_one_message(tmp_path, override, words):
    result = run_kdrun("train", *override.split(), cwd=tmp_path)
    assert result.returncode == 2 and not has_traceback(result.stderr), result.stderr
    assert all(word in result.stderr for word in words), result.stderr
    assert not (tmp_path / "outputs").exists()


def test_milestones_the_schedule_never_uses_are_said(tmp_path, caplog):
    """A preset's milestones in a shorter trial of its recipe are allowed, but not silently."""
    import kdrun
    from kdrun.config import compose, unused_schedule_settings

    assert unused_schedule_settings(compose(["experiment=cifar100_kd"])) == []  # 240 epochs: 150, 180, 210 all apply
    assert unused_schedule_settings(compose(["trainer.milestones=[2]"])) == [
        "trainer.milestones=[2] are used only with trainer.scheduler=multistep, not none"]
    late = ["trainer.scheduler=multistep", "trainer.milestones=[1,10]", "trainer.teacher_epochs=12", "trainer.student_epochs=2"]
    kdrun.run([*late, "model.teacher.hidden=[16]", "model.student.hidden=[8]", "dataset.n_samples=120", "plots=false",
               "cache.enabled=false"], run_dir=tmp_path / "run")  # fmt: skip
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == ["trainer.milestones [10] are at or after the students' last epoch (2): the learning rate never drops there"], said


# --------------------------------------------------------------------------- augmentation


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A stand-in augmentation with one random draw per batch (what matters here is the draws)."""
    return torch.roll(x, int(torch.randint(0, 3, (1,), generator=generator)), dims=-1)


def test_augmentation_draws_pair_the_students_and_the_teacher_sees_the_augmented_batch():
    generator = torch.Generator().manual_seed(0)
    train = Split(torch.randint(0, 256, (48, 1, 4, 4), dtype=torch.uint8, generator=generator), torch.randint(0, 3, (48,), generator=generator))
    torch.manual_seed(0)
    teacher = MLP((1, 4, 4), 3, [8])
    seen: dict[str, list[torch.Tensor]] = {"a": [], "b": [], "teacher": []}

    def recording(name):
        def augment(x, draws):
            out = _shift(x, draws)
            seen[name].append(out)
            return out

        return augment

    teacher.register_forward_hook(lambda module, args, out: seen["teacher"].append(args[0].clone()) if not module.training else None)
    settings = FitSettings(2, 16, "adam", 1e-3, 0.0, 5)
    prepare = lambda x: x.float() / 255  # noqa: E731
    for name in ("a", "b"):
        torch.manual_seed(1)
        student = MLP((1, 4, 4), 3, [4])
        seen["teacher"].clear()
        fit(student, train, train, settings, name, Distillation(_MSELoss(), teacher), prepare=prepare, augment=recording(name))
    assert len(seen["a"]) == 6 and all(torch.equal(a, b) for a, b in zip(seen["a"], seen["b"]))  # the same draws
    # the teacher's targets come from the augmented batches, not from precomputed clean rows
    assert torch.equal(seen["teacher"][0], prepare(seen["b"][0]))


class _MSELoss(torch.nn.Module):
    def forward(self, student_logits, teacher_logits, labels):
        return torch.nn.functional.mse_loss(student_logits, teacher_logits)


# --------------------------------------------------------------------------- a teacher trained elsewhere


def test_a_teacher_from_a_weights_file_is_loaded_not_trained(tmp_path):
    first = tmp_path / "first"
    run_kdrun("train", f"hydra.run.dir={first}", "trainer.epochs=3", cwd=tmp_path, check=True)
    weights = tmp_path / "teacher.pth"  # a plain state_dict, as other tools save it
    torch.save(torch.load(first / "teacher.pt", weights_only=True)["state_dict"], weights)
    second = tmp_path / "second"
    run_kdrun("train", f"hydra.run.dir={second}", "trainer.epochs=3", f"model.teacher.checkpoint={weights}", cwd=tmp_path, check=True)
    summary = _summary(second)
    assert summary["teacher"]["source"] == "checkpoint" and summary["teacher"]["epoch"] == ""
    assert read_status(second)["teacher_sha256"] == file_digest(weights)  # kdrun compare tells teacher files apart by it
    assert summary["teacher"]["test_acc"] == _summary(first)["teacher"]["test_acc"]
    with open(second / "metrics.csv", newline="") as handle:
        assert {row["model"] for row in csv.DictReader(handle)} == {"distilled", "baseline"}  # no teacher epochs
    # kdrun's own teacher.pt records its input scaling: a run that scales otherwise is warned
    third = run_kdrun("train", f"hydra.run.dir={tmp_path / 'third'}", "trainer.epochs=1", "dataset.normalize=true",
                      f"model.teacher.checkpoint={first / 'teacher.pt'}", cwd=tmp_path, check=True)  # fmt: skip
    assert "trained on inputs standardised with" in third.stdout + third.stderr and not has_traceback(third.stderr)
    same = run_kdrun("train", f"hydra.run.dir={tmp_path / 'same'}", "trainer.epochs=1", f"model.teacher.checkpoint={first / 'teacher.pt'}",
                     cwd=tmp_path, check=True)  # fmt: skip
    assert "standardised with" not in same.stdout + same.stderr


def test_a_changed_teacher_file_makes_a_run_of_other_settings(tmp_path):
    """Resuming or skipping a completed sweep job compares config hashes: a teacher file whose
    content changed must not pass for the same run."""
    from kdrun.config import compose, config_hash

    weights = tmp_path / "teacher.pth"
    weights.write_bytes(b"first")
    cfg = compose([f"model.teacher.checkpoint={weights}"])
    first = config_hash(cfg)
    assert config_hash(cfg) == first and first != config_hash(compose([]))
    weights.write_bytes(b"second")
    assert config_hash(cfg) != first


def test_run_digests_stay_those_of_earlier_versions_unless_a_run_computes_otherwise():
    """A run's digest decides whether a rerun continues it or skips it as completed, so a new
    setting must not change the digests of runs it leaves alone (the values are those of
    kdrun at c5f1cc1); a loss that computes otherwise than before (AT, FitNet) gets new ones."""
    from kdrun.config import compose, config_hash

    for overrides, before in (([], "6cb1cd5f4aae8117"), (["experiment=cifar100_kd"], "e4550749474d6d71"), (["loss=dkd"], "014f103329a458a6")):
        assert config_hash(compose(overrides)) == before, (overrides, "this change makes earlier unfinished runs impossible to continue")
    assert config_hash(compose(["experiment=digits_methods", "loss=at"])) != "46fbf1b6d411fd38"  # its stage pairs changed


def test_a_weights_file_that_does_not_fit_is_one_message(tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save({"network.0.weight": torch.zeros(3, 3)}, wrong)
    result = run_kdrun("train", f"model.teacher.checkpoint={wrong}", cwd=tmp_path)
    assert result.returncode == 2 and not has_traceback(result.stderr), result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.teacher.checkpoint" in lines[0] and "network.0.weight (3, 3)" in lines[0] and "missing" in lines[0]
    assert not (tmp_path / "outputs").exists()
    missing = run_kdrun("train", f"model.teacher.checkpoint={tmp_path / 'nope.pt'}", cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_a_cnn_teacher_distils_into_an_mlp_student(tmp_path):
    run = tmp_path / "run"
    run_kdrun(
        "train", f"hydra.run.dir={run}", "dataset=digits", "model/teacher=cnn", "model/student=mlp",
        "model.teacher.channels=[8,16]", "model.student.hidden=[32]", "trainer.epochs=3", "plots=false", cwd=tmp_path, check=True,
        tiny=False,  # the tiny defaults size an MLP teacher
    )  # fmt: skip
    assert read_status(run)["status"] == "completed"
    assert float(_summary(run)["teacher"]["test_acc"]) > 0.5


def test_a_weights_file_with_nan_weights_or_a_folder_is_one_message(tmp_path):
    from kdrun.errors import ConfigError
    from kdrun.models.weights import load_weights

    teacher = MLP((4,), 3, [5])
    broken = tmp_path / "broken.pt"
    torch.save({name: value * math.nan if name.endswith("bias") else value for name, value in teacher.state_dict().items()}, broken)
    with pytest.raises(ConfigError, match=r"holds NaN or inf weights: .*bias"):  # was loaded: a teacher at chance, exit 0
        load_weights(MLP((4,), 3, [5]), broken, "model.teacher.checkpoint")
    with pytest.raises(ConfigError, match="a folder, not a file"):
        load_weights(teacher, tmp_path, "model.teacher.checkpoint")
