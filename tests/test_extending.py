"""A user's own model, dataset and loss, each from a module outside kdrun (PYTHONPATH +
--config-dir), through the real CLI; the loss contract's optional parts (features, parameters of
its own, an epoch hook) through ``fit``; and ``kdrun.run``, the Python entry point."""

from __future__ import annotations

import csv
import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import has_traceback, run_kdrun

from kdrun.run_files import read_status

USER_CODE = {
    "nets.py": """
        import math
        from torch import nn

        def make_net(input_shape, num_classes, width=8):
            assert isinstance(input_shape, tuple), input_shape  # as the README says: (1, 8, 8) + ... works
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Tanh(), nn.Linear(width, num_classes))

        def not_a_module(input_shape, num_classes):
            return "a string"

        def misfit(input_shape, num_classes):  # written for 64 features
            return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

        def wrong_shape(input_shape, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes + 1))

        def raises(input_shape, num_classes):
            raise ValueError("my own bug")

        class Pair(nn.Module):  # returns (logits, features), as some networks do
            def __init__(self, input_shape, num_classes):
                super().__init__()
                self.net = make_net(input_shape, num_classes)

            def forward(self, x):
                return self.net(x), x

        class PlainList(nn.Module):  # its layers in a plain list: not registered, nothing to train
            def __init__(self, input_shape, num_classes):
                super().__init__()
                self.layers = [nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes)]

            def forward(self, x):
                for layer in self.layers:
                    x = layer(x)
                return x

        class BadForward(nn.Module):  # builds, then fails inside torch at the first batch of training
            def __init__(self, input_shape, num_classes):
                super().__init__()
                self.net = make_net(input_shape, num_classes)

            def forward(self, x):
                if self.training:
                    return self.net[3](x)  # the last layer on the inputs: torch raises
                return self.net(x)

        def library_style(*, weights=None, **kwargs):
            # like torchvision.models.resnet18(weights=None, num_classes=...): no input_shape
            assert weights is None and set(kwargs) == {"num_classes"}, kwargs
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(kwargs["num_classes"]))
    """,
    "blobs.py": """
        import torch

        def load(n=200, classes=4, seed=0):
            generator = torch.Generator().manual_seed(seed)
            y = torch.arange(n) % classes
            x = (torch.rand(n, 1, 6, 6, generator=generator) * 100 + 30 * y.view(-1, 1, 1, 1)).to(torch.uint8)
            return {"train": (x, y)}

        def missing_file():
            raise FileNotFoundError("/data/blobs.npz")

        def misnamed():
            return {"training": (torch.zeros(8, 3), torch.zeros(8, dtype=torch.long))}
    """,
    "mylosses.py": """
        import torch.nn.functional as F
        from kdrun.losses import DistillationLoss

        class LogitMSE:
            def __init__(self, weight=1.0):
                self.weight = weight

            def __call__(self, student_logits, teacher_logits, labels):
                mse = F.mse_loss(student_logits, teacher_logits)
                ce = F.cross_entropy(student_logits, labels)
                return {"loss": ce + self.weight * mse, "mse": mse, "ce": ce}

        def fn_loss(student_logits, teacher_logits, labels, weight=1.0):
            return F.cross_entropy(student_logits, labels) + weight * F.mse_loss(student_logits, teacher_logits)

        class NoCall:  # forgot __call__
            pass

        class NoForward(DistillationLoss):  # forgot forward
            pass

        class TypoFeatures(DistillationLoss):  # a layer name the student does not have
            student_features = ("network.9",)

            def forward(self, student_logits, teacher_logits, labels, student_features):
                return F.cross_entropy(student_logits, labels)

        class TwoArguments:  # forgot the labels
            def __call__(self, student_logits, teacher_logits):
                return F.mse_loss(student_logits, teacher_logits)

        def returns_float(student_logits, teacher_logits, labels):
            return F.cross_entropy(student_logits, labels).item()

        def raises(student_logits, teacher_logits, labels):
            return F.mse_loss(student_logits, teacher_logits[:, :3])  # a bug of one's own

        class OwnHook(DistillationLoss):  # reads the student's hidden layer through a hook of its own
            def setup(self, student, teacher, inputs):
                self.captured = {}
                student.network[1].register_forward_hook(lambda module, args, output: self.captured.__setitem__("hidden", output))

            def forward(self, student_logits, teacher_logits, labels):
                return F.cross_entropy(student_logits, labels) + 0.01 * self.captured["hidden"].pow(2).mean()

        class KeepsATensor(DistillationLoss):  # keeps a tensor with a graph from setup: it cannot be deep-copied
            def setup(self, student, teacher, inputs):
                self.reference = teacher(inputs).mean(0)

            def forward(self, student_logits, teacher_logits, labels):
                return F.cross_entropy(student_logits, labels)

        class FlatFeatures(DistillationLoss):  # flattens conv maps with view(), which channels-last maps refuse
            student_features = ("stages.1",)

            def forward(self, student_logits, teacher_logits, labels, student_features):
                flat = student_features["stages.1"].view(len(student_logits), -1)
                return F.cross_entropy(student_logits, labels) + 0.0 * flat.mean()
    """,
}
CONFIGS = {
    "model/student/mynet.yaml": "_target_: mypkg.nets.make_net\nwidth: 6\n",
    "model/student/broken.yaml": "_target_: mypkg.nets.not_a_module\n",
    "model/student/misshapen.yaml": "_target_: mypkg.nets.wrong_shape\n",
    "model/student/misfit.yaml": "_target_: mypkg.nets.misfit\n",
    "model/student/pair.yaml": "_target_: mypkg.nets.Pair\n",
    "model/teacher/mynet.yaml": "_target_: mypkg.nets.make_net\nwidth: 12\n",
    "model/student/raises.yaml": "_target_: mypkg.nets.raises\n",
    "model/student/missing.yaml": "_target_: mypkg.nowhere.make_net\n",
    "model/student/library.yaml": "_target_: mypkg.nets.library_style\nweights: null\n",
    "model/student/plain_list.yaml": "_target_: mypkg.nets.PlainList\n",
    "model/wrong_place.yaml": "_target_: mypkg.nets.make_net\nwidth: 6\n",  # a network where the pair presets go
    "logger/quiet.yaml": "_target_: mypkg.nets.make_net\n",  # an option of one's own (never built here)
    "model/student/bad_forward.yaml": "_target_: mypkg.nets.BadForward\n",
    "dataset/missing_file.yaml": "_target_: mypkg.blobs.missing_file\n",
    "dataset/misnamed.yaml": "_target_: mypkg.blobs.misnamed\n",
    "loss/typo_features.yaml": "_target_: mypkg.mylosses.TypoFeatures\n",
    "loss/no_call.yaml": "_target_: mypkg.mylosses.NoCall\n",
    "loss/no_forward.yaml": "_target_: mypkg.mylosses.NoForward\n",
    "loss/two_arguments.yaml": "_target_: mypkg.mylosses.TwoArguments\n",
    "loss/returns_float.yaml": "_target_: mypkg.mylosses.returns_float\n_partial_: true\n",
    "loss/raises.yaml": "_target_: mypkg.mylosses.raises\n_partial_: true\n",
    "loss/own_hook.yaml": "_target_: mypkg.mylosses.OwnHook\n",
    "loss/keeps_a_tensor.yaml": "_target_: mypkg.mylosses.KeepsATensor\n",
    "loss/flat_features.yaml": "_target_: mypkg.mylosses.FlatFeatures\n",
    "dataset/blobs.yaml": "_target_: mypkg.blobs.load\nn: 200\nclasses: 4\n",
    "loss/logit_mse.yaml": "_target_: mypkg.mylosses.LogitMSE\nweight: 0.5\n",
    "loss/fn_loss.yaml": "_target_: mypkg.mylosses.fn_loss\n_partial_: true\nweight: 0.5\n",
}


@pytest.fixture(scope="module")
def user_project(tmp_path_factory) -> Path:
    """A folder with a package ``mypkg`` and a config folder ``my_conf``, as a user would have."""
    root = tmp_path_factory.mktemp("user")
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    for name, code in USER_CODE.items():
        (root / "mypkg" / name).write_text(textwrap.dedent(code))
    for name, text in CONFIGS.items():
        (root / "my_conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "my_conf" / name).write_text(text)
    return root


def user_run(root: Path, run: str, *overrides: str):
    """``kdrun train`` with the user's code and configs, tiny (no student width: theirs may have none)."""
    tiny = ["trainer.epochs=1", "model.teacher.hidden=[16]", "plots=false"]
    if not any(o.startswith("dataset=") for o in overrides):
        tiny.append("dataset.n_samples=120")
    return run_kdrun(
        "train", "--config-dir", str(root / "my_conf"), f"hydra.run.dir={root / run}", *tiny, *overrides,
        cwd=root, tiny=False, cache_dir=root / "cache", env={"PYTHONPATH": str(root)},
    )  # fmt: skip


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_users_model_trains_as_the_student_and_its_checkpoint_rebuilds_it(user_project, monkeypatch):
    result = user_run(user_project, "model", "model/student=mynet")
    assert result.returncode == 0, result.stderr
    summary = {row["model"]: row for row in read_rows(user_project / "model" / "summary.csv")}
    assert int(summary["distilled"]["params"]) == 784 * 6 + 6 + 6 * 10 + 10
    assert summary["distilled"]["source"] == "trained"
    from kdrun.models import load

    monkeypatch.syspath_prepend(str(user_project))
    model = load(user_project / "model" / "distilled.pt")
    assert isinstance(model.model, torch.nn.Sequential) and model(torch.randn(2, 784)).shape == (2, 10)


def test_a_library_constructor_gets_num_classes_alone(user_project, monkeypatch):
    """torchvision and timm constructors take num_classes but no input_shape: kdrun passes
    input_shape only to a _target_ that names it."""
    result = user_run(user_project, "library", "model/student=library")
    assert result.returncode == 0, result.stderr
    checkpoint = torch.load(user_project / "library" / "distilled.pt", weights_only=True)
    assert checkpoint["model"] == {"_target_": "mypkg.nets.library_style", "weights": None, "num_classes": 10}
    monkeypatch.syspath_prepend(str(user_project))
    from kdrun.models import load

    assert load(user_project / "library" / "baseline.pt", raw_inputs=False)(torch.randn(3, 784)).shape == (3, 10)


def test_a_torchvision_model_trains_through_its_target(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from test_cifar import write_set

    write_set(tmp_path / "data", "cifar10", n_per_file=8)
    (tmp_path / "conf" / "model" / "student").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "student" / "tv_resnet18.yaml").write_text("_target_: torchvision.models.resnet18\nweights: null\n")
    result = run_kdrun(
        "train", "--config-dir", str(tmp_path / "conf"), "dataset=cifar10", f"dataset.root={tmp_path / 'data'}",
        "model/teacher=resnet8", "model/student=tv_resnet18", "trainer.epochs=1", "plots=false",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, tiny=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {row["model"]: row for row in read_rows(tmp_path / "run" / "summary.csv")}
    expected = sum(p.numel() for p in torchvision.models.resnet18(num_classes=10).parameters())
    assert int(rows["distilled"]["params"]) == int(rows["baseline"]["params"]) == expected


@pytest.mark.slow
def test_a_users_dataset_is_split_normalised_and_trained_on(user_project):
    result = user_run(user_project, "data", "dataset=blobs", "dataset.val_fraction=0.2", "dataset.test_fraction=0.1", "dataset.transfer_size=40")
    assert result.returncode == 0, result.stderr
    row = read_rows(user_project / "data" / "summary.csv")[0]
    assert (row["n_train"], row["n_val"], row["n_test"], row["n_transfer"]) == ("140", "40", "20", "40")
    assert row["dataset"] == "mypkg.blobs.load"  # no name given: its loader's
    checkpoint = torch.load(user_project / "data" / "teacher.pt", weights_only=True)
    assert checkpoint["model"]["input_shape"] == [1, 6, 6] and checkpoint["model"]["num_classes"] == 4
    assert len(checkpoint["normalization"]["std"]) == 1 and checkpoint["normalization"]["std"][0] > 0  # per channel, of [0, 1]-scaled uint8


@pytest.mark.slow
def test_a_users_loss_and_its_named_parts_become_metrics_columns(user_project):
    result = user_run(user_project, "loss", "loss=logit_mse", "trainer.epochs=2")
    assert result.returncode == 0, result.stderr
    rows = read_rows(user_project / "loss" / "metrics.csv")
    distilled = [r for r in rows if r["model"] == "distilled"]
    assert len(distilled) == 2 and all(float(r["mse"]) > 0 and float(r["ce"]) > 0 for r in distilled)
    for row in distilled:  # the epoch means of loss = ce + 0.5 * mse, batch by batch
        assert float(row["train_loss"]) == pytest.approx(float(row["ce"]) + 0.5 * float(row["mse"]), rel=1e-5)
    assert all(r["mse"] == "" for r in rows if r["model"] != "distilled")
    summary = read_rows(user_project / "loss" / "summary.csv")
    assert summary[0]["alpha"] == summary[0]["temperature"] == ""  # not kd: no alpha or T


@pytest.mark.slow
def test_a_function_is_a_loss_through_partial(user_project):
    result = user_run(user_project, "fn-loss", "loss=fn_loss")
    assert result.returncode == 0, result.stderr
    assert read_status(user_project / "fn-loss")["status"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("loss, words", [
    ("no_call", "mypkg.mylosses.NoCall builds a NoCall, which cannot be called"),
    ("no_forward", "mypkg.mylosses.NoForward is a torch module without a forward method"),
    ("two_arguments", "mypkg.mylosses.TwoArguments is called with (student_logits, teacher_logits)"),
])  # fmt: skip
def test_a_loss_kdrun_cannot_call_is_one_message_before_any_training(user_project, loss, words):
    """Each was a traceback from the training loop, after the teacher had trained."""
    result = user_run(user_project, f"loss-{loss}", f"loss={loss}")
    assert result.returncode == 2 and not has_traceback(result.stderr), result.stderr
    assert result.stderr.strip().splitlines() == [f"kdrun ERROR: loss: {words}; kdrun calls a loss as loss(student_logits, teacher, labels) (see kdrun/losses/base.py)"]
    assert "teacher   epoch" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("override, code, message", [
    ("dataset=missing_file", 2, "kdrun ERROR: dataset mypkg.blobs.missing_file: its loader cannot read a file: FileNotFoundError: /data/blobs.npz "
                                "(relative paths start at "),  # was "kdrun ERROR: /data/blobs.npz", exit 1
    ("dataset=misnamed", 2, "and optionally 'test': (x, y), got a dict with keys ['training']"),
    ("loss=typo_features", 2, "kdrun ERROR: the loss's student_features: the student has no layer network.9; its layers: "),  # before the teacher trains
    ("loss=returns_float", 2, "kdrun ERROR: the loss mypkg.mylosses.returns_float returned a float; it must return a scalar tensor"),  # was after the teacher trained
])  # fmt: skip
def test_mistakes_in_a_users_loader_or_loss_say_what_and_where(user_project, override, code, message):
    result = user_run(user_project, override.replace("=", "-"), override)
    assert result.returncode == code and not has_traceback(result.stderr), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert "teacher   epoch" not in result.stdout


@pytest.mark.slow
def test_an_error_torch_raises_in_a_users_forward_is_placed_in_the_users_file(user_project):
    result = user_run(user_project, "bad-forward", "model/student=bad_forward")
    assert result.returncode == 1
    message = read_status(user_project / "bad-forward")["message"]
    assert "RuntimeError" in message and "(raised at " in message and f"mypkg{os.sep}nets.py:" in message, message


@pytest.mark.slow
@pytest.mark.parametrize("loss, extra, words", [
    ("raises", (), "The size of tensor a (10) must match"),
    ("flat_features", ("dataset=digits", "model/student=cnn"), "view size is not compatible"),  # maps are channels-last in training
])  # fmt: skip
def test_an_error_in_a_users_loss_stops_the_run_before_the_teacher_trains(user_project, loss, extra, words):
    result = user_run(user_project, f"loss-{loss}", f"loss={loss}", *extra)
    assert result.returncode == 1 and "teacher   epoch" not in result.stdout, result.stdout
    message = read_status(user_project / f"loss-{loss}")["message"]
    assert "RuntimeError" in message and words in message and f"mypkg{os.sep}mylosses.py:" in message, message


@pytest.mark.slow
def test_a_loss_that_hooks_the_student_trains_its_sweeps_jobs_one_by_one(user_project):
    """A stacked model never calls the student's own layers: the hook would have read the
    features of kdrun's trial call all along, silently."""
    sweep = user_project / "hook-sweep"
    result = run_kdrun(
        "train", "-m", "--config-dir", str(user_project / "my_conf"), f"hydra.sweep.dir={sweep}", "loss=own_hook", "trainer.seed=0,1",
        "trainer.epochs=2", "dataset.n_samples=120", "plots=false", cwd=user_project, cache_dir=user_project / "cache", env={"PYTHONPATH": str(user_project)},
    )  # fmt: skip
    assert result.returncode == 0 and "forward hooks" in result.stdout + result.stderr, result.stderr[-3000:]
    assert "training 4 students together" not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["own_hook", "keeps_a_tensor"])
def test_losses_with_hooks_or_tensors_of_their_own_train(user_project, loss):
    """kdrun's call of the loss before training once ran on copies: a loss's own hook wrote into
    the original, and a tensor with a graph could not be copied."""
    result = user_run(user_project, f"loss-{loss}", f"loss={loss}")
    assert result.returncode == 0 and not has_traceback(result.stderr), result.stderr


@pytest.mark.slow
def test_a_loss_that_needs_labels_refuses_a_transfer_set_without_them(user_project):
    result = user_run(user_project, "no-labels", "loss=logit_mse", "dataset.transfer_labels=false")
    assert result.returncode == 2 and not has_traceback(result.stderr)
    assert "dataset.transfer_labels=false" in result.stderr and "mypkg.mylosses.LogitMSE" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "student, words",
    [
        ("missing", ["model.student._target_='mypkg.nowhere.make_net' cannot be found: module mypkg has no nowhere.make_net"]),
        ("broken", ["model.student", "returned str", "torch.nn.Module"]),
        ("misshapen", ["model.student", "[batch, 10]"]),
        ("misfit", ["model.student: mypkg.nets.misfit fails on inputs of shape (2, 784): RuntimeError: mat1 and mat2"]),  # was a traceback
        ("pair", ["model.student", "forward returns tuple", "float tensor of logits"]),  # was an AttributeError's traceback
        ("plain_list", ["model.student", "no trainable parameters", "nn.ModuleList"]),  # was a traceback from the optimiser
    ],
)
def test_a_users_broken_model_is_one_message(user_project, student, words):
    result = user_run(user_project, f"bad-{student}", f"model/student={student}")
    assert result.returncode == 2
    assert not has_traceback(result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert read_status(user_project / f"bad-{student}")["status"] == "failed"


def test_a_misspelt_setting_of_a_users_target_names_the_one_it_takes(user_project, monkeypatch):
    """A config of one's own has no schema to check it against, so the target's signature says."""
    from omegaconf import OmegaConf

    monkeypatch.syspath_prepend(str(user_project))

    from kdrun.config import instantiate
    from kdrun.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        instantiate(OmegaConf.create({"_target_": "mypkg.nets.make_net", "widht": 6}), "model.student", input_shape=(4,), num_classes=3)
    assert str(caught.value) == (
        "model.student: mypkg.nets.make_net does not take model.student.widht (it takes input_shape, num_classes, width); "
        "did you mean model.student.width (not widht)?"
    )
    with pytest.raises(ConfigError) as caught:  # what kdrun passes itself cannot be removed with ~: say so
        instantiate(OmegaConf.create({"_target_": "mypkg.blobs.load"}), "model.student", num_classes=3)  # no num_classes parameter
    assert str(caught.value).startswith("model.student: kdrun passes num_classes (from the data) to mypkg.blobs.load, which takes no such")
    with pytest.raises(ConfigError) as caught:  # a preset's MLP settings on one's own model
        instantiate(OmegaConf.create({"_target_": "mypkg.nets.make_net", "hidden": [8], "dropout": 0.1}), "model.teacher", input_shape=(4,), num_classes=3)
    assert str(caught.value).endswith(
        "does not take model.teacher.hidden, model.teacher.dropout (it takes input_shape, num_classes, width); "
        "remove them from the config that sets them, or with ~model.teacher.hidden ~model.teacher.dropout"
    )


def test_a_misspelt_option_of_ones_own_in_a_list_is_named_with_its_folders_options(user_project):
    result = user_run(user_project, "list-typo", "logger=[csv,quiett]")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "kdrun ERROR: logger=quiett is not an option: did you mean logger=quiet? choose from csv, mlflow, quiet, tensorboard"
    ], result.stderr


def test_a_network_config_in_the_pair_presets_folder_says_where_it_goes(user_project):
    result = user_run(user_project, "wrong-place", "model=wrong_place")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "kdrun ERROR: model=wrong_place: the model/ folder holds pair presets (model.teacher and model.student); "
        "put a network's config in model/student/ or model/teacher/ and choose it with model/student=wrong_place"
    ], result.stderr


def test_a_misspelt_key_of_a_users_config_on_the_command_line_names_the_one_it_has(user_project):
    result = user_run(user_project, "typo", "loss=logit_mse", "loss.wieght=0.1")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "kdrun ERROR: loss.wieght is not a setting: did you mean loss.weight? the settings here are loss.weight"
    ], result.stderr


@pytest.mark.slow
def test_an_error_in_the_users_code_fails_its_job_alone_in_a_sweep(user_project):
    """Its traceback is shown (it is the user's to debug); the other jobs complete, and the sweep
    ends with the comparison and exit 1 (it ended with the traceback, and no comparison)."""
    sweep = user_project / "sweep-raises"
    result = run_kdrun(
        "train", "-m", "--config-dir", str(user_project / "my_conf"), f"hydra.sweep.dir={sweep}", "trainer.epochs=1", "model.teacher.hidden=[16]",
        "plots=false", "dataset.n_samples=120", "model/student=raises,mynet", cwd=user_project, tiny=False, cache_dir=user_project / "cache",
        env={"PYTHONPATH": str(user_project)},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "ValueError: my own bug" in result.stderr and "job #0 failed with an error in code" in result.stderr
    statuses = {row["model/student"]: row["status"] for row in read_rows(sweep / "comparison.csv")}
    assert statuses == {"raises": "failed", "mynet": "completed"}, statuses
    failed = [status for status in (json.loads(path.read_text()) for path in sweep.glob("**/status.json")) if status["status"] == "failed"]
    assert len(failed) == 1 and "ValueError: my own bug (raised at " in failed[0]["message"] and "mypkg/nets.py:" in failed[0]["message"]


def test_a_checkpoint_on_the_users_teacher_config_says_to_add_it_with_plus(user_project):
    result = run_kdrun(
        "train", "--config-dir", str(user_project / "my_conf"), f"hydra.run.dir={user_project / 'ck'}", "model/teacher=mynet",
        "model.teacher.checkpoint=/tmp/teacher.pt", cwd=user_project, tiny=False, env={"PYTHONPATH": str(user_project)},
    )  # fmt: skip
    assert result.returncode == 2 and "add it with +model.teacher.checkpoint=PATH" in result.stderr, result.stderr


@pytest.mark.slow
def test_a_users_teacher_from_a_checkpoint_is_not_held_to_its_training_settings(user_project):
    """It does not train, so a warm-up longer than trainer.teacher_epochs is no mistake (it was
    refused: the check read no checkpoint on a user's teacher, a plain dict)."""
    common = ["train", "--config-dir", str(user_project / "my_conf"), "model/teacher=mynet", "model/student=mynet", "plots=false",
              "dataset.n_samples=120", "trainer.teacher_epochs=1", "trainer.student_epochs=3"]  # fmt: skip
    env = {"PYTHONPATH": str(user_project)}
    first = run_kdrun(*common, f"hydra.run.dir={user_project / 'own-teacher'}", cwd=user_project, tiny=False, env=env)
    assert first.returncode == 0, first.stderr
    loaded = run_kdrun(*common, f"hydra.run.dir={user_project / 'own-teacher-loaded'}", "trainer.warmup_epochs=2",
                       f"+model.teacher.checkpoint={user_project / 'own-teacher' / 'teacher.pt'}", cwd=user_project, tiny=False, env=env)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr


def _annotated(width: float = 1, hidden=8) -> tuple:
    return width, hidden


def _plain(width=8) -> int:
    return width


def test_text_for_a_number_of_ones_own_code_is_refused_unless_an_annotation_allows_it():
    from kdrun.config import instantiate
    from kdrun.errors import ConfigError

    assert instantiate({"_target_": "test_extending._annotated", "width": 0.5, "hidden": [8, 4]}, "model.student") == (0.5, [8, 4])
    with pytest.raises(ConfigError, match=r"model.student.width='abc' is not allowed: an integer, as test_extending._plain's default \(8\) is"):
        instantiate({"_target_": "test_extending._plain", "width": "abc"}, "model.student")


@pytest.mark.parametrize("target, meant", [("kdrun.models.MPL", "kdrun.models.MLP"), ("kdrun.model.MLP", "kdrun.models.MLP"),
                                           ("kdrun.losses.KDlos", "kdrun.losses.KDLoss")])  # fmt: skip
def test_a_misspelt_target_gets_the_name_it_likely_meant(target, meant):
    from kdrun.config import instantiate
    from kdrun.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"_target_='{target}' cannot be found: .*; did you mean {meant}\?$"):
        instantiate({"_target_": target}, "model.student")


@pytest.mark.slow
def test_settings_the_users_code_does_not_take_are_one_message(user_project):
    result = user_run(user_project, "bad-key", "model/student=mynet", "+model.student.depth=3")
    assert result.returncode == 2 and not has_traceback(result.stderr)
    assert "model.student" in result.stderr and "depth" in result.stderr, result.stderr
    result = user_run(user_project, "bad-type", "model/student=mynet", "model.student.width=abc")  # was a traceback from nn.Linear
    assert result.returncode == 2 and not has_traceback(result.stderr)
    assert "model.student.width='abc' is not allowed: an integer, as mypkg.nets.make_net's default (8) is" in result.stderr, result.stderr


# --------------------------------------------------------------------------- the loss contract, through fit


def test_a_loss_with_features_parameters_and_an_epoch_hook_trains_through_fit():
    """FitNets-style: a regressor of the loss's own maps the student's hidden layer onto the
    teacher's; it is built in setup (once shapes are known) and trained by the student's optimiser."""
    from kdrun.data import Split
    from kdrun.losses import DistillationLoss
    from kdrun.models import MLP
    from kdrun.train import Distillation, FitSettings, fit

    class Hint(DistillationLoss):
        student_features = ("network.1",)
        teacher_features = ("network.1",)

        def __init__(self) -> None:
            super().__init__()
            self.epochs_seen: list[tuple[int, int]] = []

        def setup(self, student, teacher, inputs):
            with torch.no_grad():
                student(inputs), teacher(inputs)
            self.regressor = torch.nn.Linear(8, 16)  # student width -> teacher width

        def set_epoch(self, epoch, epochs):
            self.epochs_seen.append((epoch, epochs))

        def forward(self, student_logits, teacher_logits, labels, student_features, teacher_features):
            hint = torch.nn.functional.mse_loss(self.regressor(student_features["network.1"]), teacher_features["network.1"])
            return {"loss": torch.nn.functional.cross_entropy(student_logits, labels) + hint, "hint": hint}

    generator = torch.Generator().manual_seed(0)
    train = Split(torch.randn(64, 5, generator=generator), torch.randint(0, 3, (64,), generator=generator))
    val = Split(torch.randn(16, 5, generator=generator), torch.randint(0, 3, (16,), generator=generator))
    torch.manual_seed(0)
    teacher, student, loss = MLP((5,), 3, [16]), MLP((5,), 3, [8]), Hint()
    rows = fit(student, train, val, FitSettings(4, 16, "adam", 1e-2, 0.0, 0), "distilled", Distillation(loss, teacher))
    before = loss.regressor.weight.detach().clone()
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4] and loss.epochs_seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert rows[-1]["hint"] < rows[0]["hint"]  # the regressor and the student learn to match the teacher
    fit(student, train, val, FitSettings(1, 16, "adam", 1e-2, 0.0, 0), "distilled", Distillation(loss, teacher))
    assert not torch.equal(before, loss.regressor.weight)  # trained by the student's optimiser
    assert not student.network[1]._forward_hooks  # the feature hooks are gone after fit


def test_a_losss_setup_and_idle_parameters_leave_the_students_pairing_intact():
    """A loss that builds a regressor in setup (random weights) and leaves it idle: the distilled
    student must still draw the baseline's dropout masks, and the optimiser skip the idle
    parameters, so that the loss (plain cross-entropy here) is the only difference: bit for bit."""
    from kdrun.data import Split
    from kdrun.losses import DistillationLoss
    from kdrun.models import MLP
    from kdrun.train import Distillation, FitSettings, fit

    class CrossEntropyWithIdleRegressor(DistillationLoss):
        def setup(self, student, teacher, inputs):
            self.regressor = torch.nn.Linear(4, 4)

        def forward(self, student_logits, teacher_logits, labels):
            return torch.nn.functional.cross_entropy(student_logits, labels)

    generator = torch.Generator().manual_seed(1)
    split = Split(torch.randn(48, 6, generator=generator), torch.randint(0, 3, (48,), generator=generator))
    settings = FitSettings(3, 8, "adam", 1e-2, 0.0, batch_seed=5)
    weights = []
    for distillation in (None, Distillation(CrossEntropyWithIdleRegressor(), MLP((6,), 3, [4]))):
        torch.manual_seed(0)
        student = MLP((6,), 3, [16], dropout=0.5)
        torch.manual_seed(2)  # the dropout masks
        fit(student, split, split, settings, "student", distillation)
        weights.append(student.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _per_example(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(s, y, reduction="none")


def _total(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> dict:
    return {"total": torch.nn.functional.cross_entropy(s, y)}


@pytest.mark.parametrize("loss, message", [
    (lambda s, t, y: 1.0, "returned a float; it must return a scalar tensor or a dict holding 'loss'"),
    (lambda s, t, y: torch.nn.functional.cross_entropy(s, y).detach(), "no gradient"),  # was torch's traceback at backward()
    (_per_example, r"the loss test_extending._per_example returned a tensor of shape \[4\] as 'loss'; it must return scalar tensors"),
    (_total, r"the loss test_extending._total returned a dict with keys \['total'\]"),
])  # fmt: skip
def test_a_loss_returning_something_else_is_one_message(loss, message):
    from kdrun.data import Split
    from kdrun.errors import ConfigError
    from kdrun.models import MLP
    from kdrun.train import Distillation, FitSettings, fit

    split = Split(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    with pytest.raises(ConfigError, match=message):
        fit(MLP((3,), 2), split, split, FitSettings(1, 4, "adam", 1e-3, 0.0, 0), "distilled", Distillation(loss, MLP((3,), 2)))


def test_the_loss_call_before_training_leaves_the_models_and_the_loss_as_they_were():
    """call_loss_once runs the student in train mode (batch norm, dropout) on channels-last maps,
    as fit will; every weight, buffer, layout, mode and gradient is as before afterwards."""
    from kdrun.losses import FitNetLoss
    from kdrun.models import CNN
    from kdrun.train import call_loss_once

    torch.manual_seed(0)
    student, teacher = CNN((1, 8, 8), 3, [4, 8], dropout=0.3), CNN((1, 8, 8), 3, [8, 16])
    student.to(memory_format=torch.channels_last)  # a model laid out so by its own code
    loss, x = FitNetLoss(), torch.randn(6, 1, 8, 8)
    loss.setup(student, teacher, x)
    teacher.eval()
    modules = (student, teacher, loss)
    before = [[(t.detach().clone(), t.stride()) for t in (*m.parameters(), *m.buffers())] for m in modules]
    modes = [[sub.training for sub in m.modules()] for m in modules]
    call_loss_once(loss, student, teacher, x, torch.tensor([0, 1, 2, 0, 1, 2]), epochs=4)
    after = [[(t.detach().clone(), t.stride()) for t in (*m.parameters(), *m.buffers())] for m in modules]
    assert all(torch.equal(a, b) and sa == sb for m, n in zip(before, after) for (a, sa), (b, sb) in zip(m, n))
    assert modes == [[sub.training for sub in m.modules()] for m in modules]
    assert all(p.grad is None for m in (student, loss) for p in m.parameters())

    class TrainingOnlyTuple(torch.nn.Module):  # as torchvision's GoogLeNet returns aux logits in train mode
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(64, 3)

        def forward(self, x):
            logits = self.net(x.flatten(1))
            return (logits, logits) if self.training else logits

    with pytest.raises(TypeError, match="not tuple"):  # the error training would meet (a student in train mode), before any training
        call_loss_once(lambda s, t, y: torch.nn.functional.cross_entropy(s, y), TrainingOnlyTuple(), teacher, x, torch.tensor([0, 1, 2, 0, 1, 2]), epochs=4)


# --------------------------------------------------------------------------- kdrun.run


def test_kdrun_run_writes_the_run_directory_and_returns_the_results(tmp_path):
    import kdrun

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    overrides = ["trainer.epochs=2", "dataset.n_samples=120", "model.teacher.hidden=[16]", "model.student.hidden=[8]", f"cache.dir={tmp_path / 'cache'}"]
    results = kdrun.run(overrides, run_dir=tmp_path / "run")
    assert torch.equal(torch.rand(1), expected_next) and torch.get_num_threads() == threads  # the caller's state
    assert list(results.summary["model"]) == ["teacher", "distilled", "baseline"]
    assert results.summary.loc[1, "test_acc"] == pytest.approx(float(read_rows(tmp_path / "run" / "summary.csv")[1]["test_acc"]))
    assert len(results.metrics) == 6 and {"soft_loss", "hard_loss"} <= set(results.metrics.columns)
    assert set(results.models) == {"teacher", "distilled", "baseline"} and not results.models["distilled"].training
    for name in ("metrics.csv", "summary.csv", "curves.png", "temperature.png", "distilled.pt", ".hydra/config.yaml"):
        assert (tmp_path / "run" / name).is_file(), name
    assert read_status(tmp_path / "run")["status"] == "completed"
    assert "Distillation improvement" in (tmp_path / "run" / "train.log").read_text()
    # kdrun compare reads it as it reads a CLI run: the group choices too
    from kdrun import compare

    run = compare.collect([tmp_path / "run"]).runs[0]
    assert run.status == "completed" and compare.read_settings(run.path, ["dataset", "loss"]) == {"dataset": "synthetic", "loss": "kd"}


def test_kdrun_run_takes_a_users_config_folder(user_project, tmp_path, monkeypatch):
    """kdrun.run(..., config_dir=) is kdrun train --config-dir: the user's options compose."""
    import kdrun

    monkeypatch.syspath_prepend(str(user_project))
    overrides = ["model/student=mynet", "trainer.epochs=1", "dataset.n_samples=120", "model.teacher.hidden=[16]", "plots=false", f"cache.dir={tmp_path / 'cache'}"]
    results = kdrun.run(overrides, run_dir=tmp_path / "run", config_dir=user_project / "my_conf")
    assert int(results.summary.loc[1, "params"]) == 784 * 6 + 6 + 6 * 10 + 10  # mynet's width 6, as in the CLI test


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.alpha=1.5", "loss.alpha=1.5 is not allowed: a number in [0, 1]"),
        ("loss.alpah=1", "loss.alpah is not a setting: did you mean loss.alpha?"),
        ("dataset=nope", "dataset=nope is not an option: choose from cifar10, cifar100, digits, fashion_mnist, mnist, synthetic"),
        ("--epochs", "--epochs is not an option of kdrun train: settings are given as key=value"),  # was Hydra's lexer
    ],
)
def test_kdrun_run_raises_the_message_the_cli_prints(tmp_path, override, message):
    import kdrun
    from kdrun.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        kdrun.run([override], run_dir=tmp_path / "run")
    assert str(info.value).startswith(message)
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder, as the CLI's
    printed = run_kdrun("train", override, f"hydra.run.dir={tmp_path / 'cli'}", cwd=tmp_path, tiny=False)
    assert printed.stderr.strip() == f"kdrun ERROR: {info.value}"


def test_kdrun_run_takes_a_list_of_settings(tmp_path):
    import kdrun

    with pytest.raises(TypeError, match=r"a list of settings, e.g. \['loss.alpha=0.5'\]; got the string 'loss.alpha=0.5'"):
        kdrun.run("loss.alpha=0.5", run_dir=tmp_path / "run")  # was read letter by letter
    settings = ["loss.alpha=0.5", "trainer.epochs=1", "model.teacher.hidden=[16]", "model.student.hidden=[8]", "dataset.n_samples=120",
                "plots=false", "cache.enabled=false"]  # fmt: skip
    results = kdrun.run(iter(settings), run_dir=tmp_path / "from-an-iterator")  # read once, not dropped after a first look
    assert results.summary.loc[1, "alpha"] == 0.5


def test_a_hydra_partial_loss_is_named_by_its_function():
    from kdrun.config import instantiate
    from kdrun.data import Split
    from kdrun.errors import ConfigError
    from kdrun.models import MLP
    from kdrun.train import Distillation, FitSettings, fit

    loss = instantiate({"_target_": "test_extending._per_example", "_partial_": True}, "loss")
    split = Split(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    with pytest.raises(ConfigError, match=r"the loss test_extending._per_example returned a tensor of shape \[4\]"):
        fit(MLP((3,), 2), split, split, FitSettings(1, 4, "adam", 1e-3, 0.0, 0), "distilled", Distillation(loss, MLP((3,), 2)))
