"""Real datasets: the IDX reader (MNIST / Fashion-MNIST), the bundled digits, the transfer set,
normalisation with training statistics, and the presets (model=hinton, experiment=*)."""

from __future__ import annotations

import csv
import math
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdrun.config import compose
from kdrun.config import validate
from kdrun.data import load_data
from kdrun.data.digits import load_digits
from kdrun.data.idx import IMAGES_MAGIC, LABELS_MAGIC, load_idx_dataset, read_idx, write_idx
from kdrun.errors import ConfigError, DataError
from kdrun.models import MLP, count_parameters

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
BASES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# --------------------------------------------------------------------------- helpers


def make_idx_set(folder: Path, n_train: int = 60, n_test: int = 20, shape=(28, 28), gz: bool = False, seed: int = 0):
    """Write the four IDX files into ``folder``; return the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }
    for base, array in arrays.items():
        write_idx(folder / (base + (".gz" if gz else "")), array)
    return arrays


def run_cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "kdrun", "train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def read_summary(path: Path) -> dict:
    with open(path, newline="") as handle:
        return {row["model"]: row for row in csv.DictReader(handle)}


# --------------------------------------------------------------------------- the IDX reader


def test_read_idx_matches_the_format_written_by_hand(tmp_path):
    pixels = bytes(range(12))
    (tmp_path / "images").write_bytes(struct.pack(">IIII", 0x00000803, 2, 2, 3) + pixels)
    (tmp_path / "labels").write_bytes(struct.pack(">II", 0x00000801, 2) + bytes([7, 3]))
    images = read_idx(tmp_path / "images", IMAGES_MAGIC)
    assert images.dtype == np.uint8 and images.shape == (2, 2, 3)
    assert images.reshape(-1).tolist() == list(range(12))
    assert read_idx(tmp_path / "labels", LABELS_MAGIC).tolist() == [7, 3]


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_dataset_loads_in_every_layout(tmp_path, name, layout, gz):
    folder = tmp_path if layout == "flat" else tmp_path / FOLDERS[name] / "raw"
    arrays = make_idx_set(folder, gz=gz)
    loaded = load_idx_dataset(tmp_path, name)
    (x, y), (x_test, y_test) = loaded["train"], loaded["test"]
    assert loaded["num_classes"] == 10
    assert x.shape == (60, 1, 28, 28) and x.dtype == torch.uint8  # images keep their shape
    assert x_test.shape == (20, 1, 28, 28) and y_test.dtype == torch.int64
    assert torch.equal(x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()  # the published test split, as published


def test_idx_dataset_accepts_other_image_sizes(tmp_path):
    make_idx_set(tmp_path, n_train=30, n_test=10, shape=(5, 7), gz=True)
    loaded = load_idx_dataset(str(tmp_path), "mnist")
    assert loaded["train"][0].shape == (30, 1, 5, 7) and loaded["test"][0].shape == (10, 1, 5, 7)


def test_fashion_mnist_never_reads_mnist_folder(tmp_path):
    make_idx_set(tmp_path / "MNIST" / "raw")
    with pytest.raises(DataError, match="FashionMNIST"):
        load_idx_dataset(tmp_path, "fashion_mnist")


# --------------------------------------------------------------------------- damaged files


def test_missing_root_is_one_clear_error(tmp_path):
    with pytest.raises(DataError) as info:
        load_idx_dataset(tmp_path / "nowhere", "mnist")
    message = str(info.value)
    assert "dataset.root" in message and "nowhere" in message and "never downloads" in message


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_absent_file_names_it_and_where_it_comes_from(tmp_path, name):
    make_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as info:
        load_idx_dataset(tmp_path, name)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message and str(tmp_path / FOLDERS[name] / "raw") in message
    assert "torchvision" in message and "never downloads" in message


def test_wrong_magic_number(tmp_path):
    arrays = make_idx_set(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", arrays["train-labels-idx1-ubyte"])  # a labels file in its place
    with pytest.raises(DataError) as info:
        load_idx_dataset(tmp_path, "mnist")
    message = str(info.value)
    assert str(tmp_path / "train-images-idx3-ubyte") in message
    assert "magic number 0x00000801, expected 0x00000803" in message


def test_gzip_data_without_gz_suffix_is_explained(tmp_path):
    make_idx_set(tmp_path, gz=True)
    os.replace(tmp_path / "train-labels-idx1-ubyte.gz", tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: .*gzip-compressed"):
        load_idx_dataset(tmp_path, "mnist")


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_truncated_file(tmp_path, gz):
    make_idx_set(tmp_path, gz=gz)
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        load_idx_dataset(tmp_path, "mnist")
    assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_truncated_header(tmp_path):
    make_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: truncated"):
        load_idx_dataset(tmp_path, "mnist")


def test_trailing_bytes_are_damage(tmp_path):
    make_idx_set(tmp_path)
    with open(tmp_path / "train-labels-idx1-ubyte", "ab") as handle:
        handle.write(b"\x01\x02")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: damaged"):
        load_idx_dataset(tmp_path, "mnist")


def test_image_and_label_counts_must_match(tmp_path):
    make_idx_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(59, dtype=np.uint8))
    with pytest.raises(DataError) as info:
        load_idx_dataset(tmp_path, "mnist")
    message = str(info.value)
    assert "60 images" in message and "59 labels" in message and "train-labels-idx1-ubyte" in message


def test_labels_out_of_range(tmp_path):
    make_idx_set(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(20, 10, dtype=np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: labels must lie in 0..9"):
        load_idx_dataset(tmp_path, "mnist")


@pytest.mark.slow
def test_damaged_file_through_the_cli_is_one_message_and_exit_2(tmp_path):
    make_idx_set(tmp_path / "data")
    path = tmp_path / "data" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    overrides = ["dataset=mnist", "dataset.root=data", f"hydra.run.dir={tmp_path}/run", "cache.enabled=false", "plots=false"]
    result = run_cli(overrides, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert str(path) in result.stderr and "truncated" in result.stderr
    assert '"failed"' in (tmp_path / "run" / "status.json").read_text()


def test_a_sweep_over_datasets_that_take_a_root_says_how_to_give_it(tmp_path):
    """Hydra checks dataset.root against the default dataset (synthetic: no root) before the sweep
    begins; kdrun says so, and ++dataset.root gives it to every job."""
    make_idx_set(tmp_path / "data")
    common = ["-m", "dataset=mnist,fashion_mnist", "trainer.epochs=1", f"hydra.sweep.dir={tmp_path}/sweep", "cache.enabled=false", "plots=false"]
    refused = run_cli([*common, "dataset.root=data"], tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "kdrun ERROR: dataset.root is not a setting of the default dataset option, which Hydra composes before the sweep over "
        "dataset=mnist,fashion_mnist begins: write ++dataset.root=data to set it in every job"
    ], refused.stderr
    misspelt = run_cli([*common, "dataset.rooot=data"], tmp_path)  # no swept option has it: the typo's own message
    assert misspelt.returncode == 2 and "dataset.rooot is not a setting: did you mean dataset.root?" in misspelt.stderr, misspelt.stderr
    swept = run_cli([*common, "++dataset.root=data"], tmp_path)
    assert swept.returncode == 0, swept.stderr
    assert sorted(read_summary(run / "summary.csv")["distilled"]["dataset"] for run in (tmp_path / "sweep").glob("*_*")) == ["fashion_mnist", "mnist"]


# --------------------------------------------------------------------------- digits


def test_bundled_digits():
    loaded = load_digits()
    x, y = loaded["train"]
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert loaded["num_classes"] == 10 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y.bincount().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert "test" not in loaded  # one pool: kdrun splits it


@pytest.mark.slow
def test_digits_end_to_end_through_the_cli(tmp_path):
    result = run_cli(
        ["dataset=digits", "trainer.epochs=1", "dataset.transfer_size=0.2", f"hydra.run.dir={tmp_path}/run",
         f"cache.dir={tmp_path}/cache", "plots=false"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = read_summary(tmp_path / "run" / "summary.csv")
    assert set(summary) == {"teacher", "distilled", "baseline"}
    row = summary["teacher"]
    assert row["dataset"] == "digits"
    n_train, n_val, n_test = int(row["n_train"]), int(row["n_val"]), int(row["n_test"])
    assert n_train + n_val + n_test == 1797 and n_val > 200 and n_test > 200
    assert int(row["n_transfer"]) == pytest.approx(0.2 * n_train, abs=5)
    assert float(row["test_acc"]) > 0.5  # real digits: one epoch of the teacher is far above chance
    assert float(summary["teacher"]["params"]) == 64 * 256 + 256 + 2 * (256 * 256 + 256) + 256 * 10 + 10


# --------------------------------------------------------------------------- transfer set and normalisation


@pytest.mark.parametrize("size, expected", [(100, 100), (0.1, None), (1.0, "all"), (None, "all")])
def test_transfer_set_sizes(size, expected):
    data = load_data(compose(["dataset=digits", f"dataset.transfer_size={'null' if size is None else size}"]).dataset)
    n_train, index = len(data.train), data.transfer_index
    if expected == "all":
        assert len(index) == n_train
    else:
        want = expected if expected is not None else round(size * n_train)
        assert abs(len(index) - want) <= 5  # stratified class by class: within rounding of each class
    assert len(torch.unique(index)) == len(index) and int(index.min()) >= 0 and int(index.max()) < n_train
    assert len(data.transfer) == len(index)
    if expected != "all":  # every class is represented in a stratified transfer set
        assert len(torch.unique(data.transfer.y)) == 10


def test_a_transfer_set_larger_than_the_training_split_is_one_message(tmp_path):
    """It was cut to the split's size silently: a run of 1,257 examples that looked like one of 5,000."""
    result = run_cli(["dataset=digits", "dataset.transfer_size=5000", "trainer.epochs=1", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "dataset.transfer_size=5000 is more examples than the training split's 1257" in result.stderr, result.stderr


def test_teacher_trains_on_the_whole_training_split_and_students_on_the_transfer_set(tmp_path, monkeypatch):
    import kdrun.experiment as experiment

    seen = {}
    real_fit = experiment.fit

    def recording_fit(model, split, val, settings, name, *args, **kwargs):
        seen[name] = len(split)
        return real_fit(model, split, val, settings, name, *args, **kwargs)

    monkeypatch.setattr(experiment, "fit", recording_fit)
    cfg = compose(["dataset=digits", "dataset.transfer_size=50", "trainer.epochs=1", "cache.enabled=false", "plots=false"])
    validate(cfg)
    summary = experiment.run_experiment(cfg, tmp_path).summary
    n_train, n_transfer = summary["teacher"]["n_train"], summary["teacher"]["n_transfer"]
    assert n_transfer < n_train / 10
    assert seen == {"teacher": n_train, "distilled": n_transfer, "baseline": n_transfer}
    assert read_summary(tmp_path / "summary.csv")["distilled"]["n_transfer"] == str(n_transfer)


def test_normalisation_uses_training_statistics_only(tmp_path):
    from kdrun.data import stratified_split

    arrays = make_idx_set(tmp_path, n_train=120, n_test=20, shape=(4, 4))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((20, 4, 4), 255, dtype=np.uint8))  # far from train
    cfg = compose(["dataset=mnist", f"dataset.root={tmp_path}", "dataset.val_fraction=0.25"]).dataset
    data = load_data(cfg)
    assert len(data.train) == 90 and len(data.val) == 30 and len(data.test) == 20
    raw = torch.from_numpy(arrays["train-images-idx3-ubyte"].reshape(120, 1, 4, 4).astype(np.float32) / 255)
    labels = torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64))
    train_idx, val_idx = stratified_split(labels, (0.25,), cfg.split_seed)
    mean, std = raw[train_idx].mean(), raw[train_idx].std()
    assert data.train.x.dtype == torch.uint8  # kept as the files hold it; scaled per batch
    train_x, val_x, test_x = (data.prepare(split.x) for split in (data.train, data.val, data.test))
    assert torch.allclose(train_x, (raw[train_idx] - mean) / std, atol=1e-5)
    assert torch.allclose(val_x, (raw[val_idx] - mean) / std, atol=1e-5)
    assert torch.allclose(test_x, torch.full_like(test_x, float((1.0 - mean) / std)), atol=1e-5)
    # statistics that included the val or test rows would have given other values
    for other in (raw, torch.cat([raw[train_idx], torch.ones(20, 1, 4, 4)])):
        assert not torch.allclose(test_x, (torch.ones(20, 1, 4, 4) - other.mean()) / other.std(), atol=1e-5)
    assert data.normalization == {"mean": [pytest.approx(float(mean))], "std": [pytest.approx(float(std))]}  # one per channel


def test_held_out_parts_have_exactly_their_fraction_of_the_examples():
    """MNIST's 60,000 training images with val_fraction 1/12 give 5,000 val and 55,000 train,
    whatever the class sizes (each class rounded alone gave 5,001)."""
    from kdrun.data import stratified_split

    labels = torch.cat([torch.full((size,), label) for label, size in enumerate([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])])
    train, val = stratified_split(labels, (1 / 12,), seed=0)
    assert (len(train), len(val)) == (55_000, 5_000)
    for label in range(10):  # each class within one example of its share
        assert abs(int((labels[val] == label).sum()) - int((labels == label).sum()) / 12) < 1
    train, val, test = stratified_split(labels[::120], (0.15, 0.15), seed=0)
    assert (len(train), len(val), len(test)) == (350, 75, 75)


def test_transfer_labels_false_requires_alpha_1():
    cfg = compose(["dataset=digits", "dataset.transfer_labels=false", "loss.alpha=0.7"])
    with pytest.raises(ConfigError, match=r"loss.alpha=0.7 .*transfer_labels=false.*alpha must be 1"):
        validate(cfg)


def test_transfer_labels_false_reports_the_baseline_as_not_trained(tmp_path):
    from kdrun.experiment import run_experiment

    cfg = compose(
        ["dataset=digits", "dataset.transfer_labels=false", "dataset.transfer_size=0.1", "loss.alpha=1",
         "trainer.teacher_epochs=2", "trainer.student_epochs=20", "cache.enabled=false", "plots=false"]
    )  # fmt: skip
    validate(cfg)
    summary = run_experiment(cfg, tmp_path).summary
    assert summary["baseline"]["source"] == "not_trained" and math.isnan(summary["baseline"]["test_acc"])
    assert summary["distilled"]["source"] == "trained" and summary["distilled"]["test_acc"] > 0.2
    rows = read_summary(tmp_path / "summary.csv")
    assert rows["baseline"]["source"] == "not_trained" and rows["baseline"]["test_acc"] == ""
    assert not (tmp_path / "baseline.pt").exists()


# --------------------------------------------------------------------------- presets


def test_hinton_model_parameter_counts_on_mnist_shaped_inputs():
    cfg = compose(["model=hinton", "dataset=mnist"])
    teacher = MLP((1, 28, 28), 10, list(cfg.model.teacher.hidden), cfg.model.teacher.dropout)
    student = MLP((1, 28, 28), 10, list(cfg.model.student.hidden), cfg.model.student.dropout)
    assert count_parameters(teacher) == 2_395_210 and count_parameters(student) == 1_276_810
    assert cfg.model.teacher.dropout > 0 and cfg.model.student.dropout == 0


def test_hinton_model_works_on_digits_shaped_inputs(tmp_path):
    data = load_data(compose(["dataset=digits"]).dataset)
    cfg = compose(["model=hinton", "dataset=digits"])
    model = MLP(data.input_shape, data.num_classes, list(cfg.model.teacher.hidden), cfg.model.teacher.dropout)
    assert data.input_shape == (1, 8, 8) and model(data.test.x[:3]).shape == (3, 10)


@pytest.mark.parametrize(
    "overrides, dataset",
    [(["experiment=digits_transfer"], "digits"), (["experiment=mnist_transfer"], "mnist"),
     (["experiment=mnist_transfer", "dataset=fashion_mnist"], "fashion_mnist")],
)  # fmt: skip
def test_experiment_presets_compose_and_validate(overrides, dataset):
    cfg = compose(overrides)
    validate(cfg)
    assert cfg.dataset.name == dataset
    assert cfg.dataset.transfer_size is not None and cfg.dataset.transfer_size < 0.1
    assert cfg.loss.alpha < 1 and cfg.dataset.transfer_labels


def test_mnist_transfer_preset_runs_on_synthetic_idx_files(tmp_path):
    from kdrun.experiment import run_experiment

    make_idx_set(tmp_path / "MNIST" / "raw", n_train=240, n_test=40, gz=True)
    cfg = compose(
        ["experiment=mnist_transfer", f"dataset.root={tmp_path}", "trainer.teacher_epochs=1", "trainer.student_epochs=1",
         "model.teacher.hidden=[32,32]", "model.student.hidden=[16,16]", "cache.enabled=false", "plots=false"]
    )  # fmt: skip
    validate(cfg)
    (tmp_path / "run").mkdir()
    summary = run_experiment(cfg, tmp_path / "run").summary
    assert summary["teacher"]["n_train"] == 220 and summary["teacher"]["n_test"] == 40
    assert summary["teacher"]["n_transfer"] == pytest.approx(0.03 * 220, abs=5)


def test_a_loaded_checkpoint_takes_raw_inputs_as_the_loader_gives_them(tmp_path):
    """digits are standardised for training; kdrun.models.load puts that scaling in front of the
    network, so the saved model classifies the loader's raw pixels as the run's evaluation did."""
    import kdrun
    from kdrun.models import Standardized, load

    results = kdrun.run(["dataset=digits", "trainer.epochs=3", "model.teacher.hidden=[32]", "cache.enabled=false", "plots=false"], run_dir=tmp_path / "run")
    raw_x, raw_y = load_digits()["train"]
    model = load(tmp_path / "run" / "teacher.pt")
    assert isinstance(model, Standardized) and not model.training
    bare = load(tmp_path / "run" / "teacher.pt", raw_inputs=False)
    data = load_data(compose(["dataset=digits"]).dataset)
    with torch.no_grad():
        mean, std = (torch.tensor(data.normalization[key]).reshape(-1, 1, 1) for key in ("mean", "std"))
        assert torch.allclose(model(data.test.x * std + mean), bare(data.test.x), atol=1e-4)
        accuracy = (model(raw_x).argmax(-1) == raw_y).float().mean().item()
    assert accuracy > 0.8 and results.summary.loc[0, "train_acc"] > 0.8


def test_a_checkpoint_of_unstandardised_inputs_still_takes_the_loaders_uint8_images(tmp_path):
    """With dataset.normalize=false kdrun still scales uint8 images to [0, 1] for training: the
    loaded model does the same, so it classifies raw images as the run did."""
    import kdrun
    from kdrun.models import Standardized, load

    make_idx_set(tmp_path / "mnist", n_train=200, n_test=50)
    overrides = ["dataset=mnist", f"dataset.root={tmp_path / 'mnist'}", "dataset.normalize=false", "trainer.epochs=2",
                 "model.teacher.hidden=[32]", "cache.enabled=false", "plots=false"]  # fmt: skip
    kdrun.run(overrides, run_dir=tmp_path / "run")
    model = load(tmp_path / "run" / "teacher.pt")
    data = load_data(compose(overrides).dataset)
    assert isinstance(model, Standardized) and data.test.x.dtype == torch.uint8  # as the IDX files hold them
    with torch.no_grad():
        bare = load(tmp_path / "run" / "teacher.pt", raw_inputs=False)
        assert torch.equal(model(data.test.x).argmax(-1), bare(data.prepare(data.test.x)).argmax(-1))


def loader_with(flaw: str) -> dict:
    """A user's dataset loader (``_target_: test_datasets.loader_with``) with one flaw."""
    g = torch.Generator().manual_seed(0)
    x, y, xt, yt = torch.randn(60, 5, generator=g), torch.arange(60) % 3, torch.randn(12, 5, generator=g), torch.arange(12) % 3
    if flaw == "nan-in-test":
        xt[4, 2] = float("nan")
    if flaw == "inf-in-train":
        x[7, 0] = float("inf")
    if flaw == "float64-beyond-float32":
        xt = xt.double()
        xt[3, 1] = 1e300  # finite in float64, inf as the models see it
    loaded = {"train": (x, y if flaw != "one-class" else torch.zeros(60, dtype=torch.long)), "test": (xt, yt if flaw != "one-class" else torch.zeros(12, dtype=torch.long))}
    if flaw == "classes-as-text":
        loaded["num_classes"] = "3"
    return loaded


def test_classes_the_training_split_lacks_are_said(caplog):
    """dataset.n_samples=5 with 10 classes trained on 3 examples, reporting +0.0 points, without a word."""
    load_data({"_target_": "kdrun.data.synthetic.make_synthetic", "name": "synthetic", "n_samples": 5})
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == ["dataset synthetic: 7 of its 10 classes (0, 2, 3, 5, 6, 7, 8) have no example in the training split: no model can learn them"], said
    caplog.clear()
    load_data({"_target_": "kdrun.data.synthetic.make_synthetic"})  # 500 examples: every class
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_test_fraction_the_data_does_not_use_is_said(caplog):
    """A loader that publishes its test split decides it: dataset.test_fraction is not used."""
    load_data({"_target_": "test_datasets.loader_with", "flaw": "none"})
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    split = load_data({"_target_": "test_datasets.loader_with", "flaw": "none", "test_fraction": 0.3})
    assert len(split.test) == 12
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == ["dataset.test_fraction=0.3 is not used: dataset test_datasets.loader_with has its own test split (12 examples)"], said


@pytest.mark.parametrize("flaw, message", [
    ("nan-in-test", "test inputs hold NaN or inf (or values beyond float32's ±3.4e38): row 4 (1 rows in all)"),  # was accepted
    ("inf-in-train", "train inputs hold NaN or inf (or values beyond float32's ±3.4e38): row 7"),
    ("float64-beyond-float32", "test inputs hold NaN or inf (or values beyond float32's ±3.4e38): row 3"),  # was a test NLL of NaN
    ("one-class", "num_classes=1: a classifier needs an integer number of classes >= 2"),  # was 100% everywhere
    ("classes-as-text", "num_classes='3'"),  # was a TypeError
])  # fmt: skip
def test_a_users_loader_with_non_finite_inputs_or_too_few_classes_is_one_message(flaw, message):
    with pytest.raises(DataError, match=re.escape(message)):
        load_data({"_target_": "test_datasets.loader_with", "flaw": flaw})
