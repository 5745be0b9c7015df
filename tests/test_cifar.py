"""CIFAR-10 / CIFAR-100 from their python-version files (folder and .tar.gz layouts), the
restricted unpickler, and the batch augmentation (random crop of the padded image, flip)."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdrun.data.augment import CropFlip, crop_flip, crop_flip_params, random_crop_flip
from kdrun.data.cifar import CIFAR10, CIFAR100, load_cifar, load_cifar10, load_cifar100, search_locations, write_cifar_batch
from kdrun.errors import DataError

SPECS = {"cifar10": CIFAR10, "cifar100": CIFAR100}
LOADERS = {"cifar10": load_cifar10, "cifar100": load_cifar100}


# --------------------------------------------------------------------------- the published format, written as Python 2 did


def _py2_str(data: bytes) -> bytes:
    """A Python 2 ``str`` in a protocol-2 pickle (SHORT_BINSTRING / BINSTRING): bytes when read back
    with encoding="bytes"."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def _py2_int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    return b"J" + struct.pack("<i", n)


def _py2_array(a: np.ndarray) -> bytes:
    """A uint8 numpy array as numpy 1.x pickled it under Python 2 (the published files' opcodes)."""
    shape = b"(" + b"".join(_py2_int(d) for d in a.shape) + b"t"
    dtype = b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
    dtype += b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + _py2_int(0) + b"tb"
    out = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"
    return out + b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(a.tobytes()) + b"tb"


def _py2_value(value) -> bytes:
    if isinstance(value, np.ndarray):
        return _py2_array(value)
    if isinstance(value, bytes):
        return _py2_str(value)
    if isinstance(value, list):
        return b"](" + b"".join(_py2_value(v) for v in value) + b"e"
    if isinstance(value, int):
        return _py2_int(value)
    raise TypeError(type(value))


def py2_pickle(batch: dict) -> bytes:
    """``batch`` (bytes keys) pickled as cPickle protocol 2 under Python 2, as the CIFAR files are."""
    return b"\x80\x02}(" + b"".join(_py2_str(k) + _py2_value(v) for k, v in batch.items()) + b"u."


def make_batches(name: str, n_per_file: int = 20, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random images [n, 3, 32, 32] and labels for each of the dataset's files."""
    spec = SPECS[name]
    rng = np.random.default_rng(seed)
    batches = {}
    for index, base in enumerate(spec.files):
        n = n_per_file * (5 if name == "cifar100" and base == "train" else 1)
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = (np.arange(n) * 7 + index) % spec.num_classes
        batches[base] = (images, labels)
    return batches


def batch_bytes(name: str, base: str, images: np.ndarray, labels: np.ndarray) -> bytes:
    spec = SPECS[name]
    batch = {b"batch_label": b"training batch 1 of 5", spec.label_key.encode(): [int(v) for v in labels]}
    if name == "cifar100":
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
    batch[b"data"] = images.reshape(len(images), -1)  # R plane, G plane, B plane: the [3, 32, 32] order
    batch[b"filenames"] = [f"img_{i}.png".encode() for i in range(len(images))]
    return py2_pickle(batch)


def write_set(root: Path, name: str, layout: str = "folder", n_per_file: int = 20, seed: int = 0, extra=None, skip=()):
    """The dataset's files under ``root`` in ``layout``: ``folder`` (<root>/<F>/), ``archive``
    (<root>/<A>, members under <F>/ plus the readme and meta as published) or ``loose`` (files in root)."""
    spec = SPECS[name]
    batches = make_batches(name, n_per_file, seed)
    contents = {base: batch_bytes(name, base, *batches[base]) for base in spec.files if base not in skip}
    contents.update(extra or {})
    root.mkdir(parents=True, exist_ok=True)
    if layout == "archive":
        members = {"readme.html": b"<html></html>", "batches.meta" if name == "cifar10" else "meta": py2_pickle({b"x": 1})}
        members.update(contents)
        order = sorted(members, key=lambda b: b[::-1])  # the published archives are in no set order either
        with tarfile.open(root / spec.archive, "w:gz", compresslevel=1) as tar:
            folder = tarfile.TarInfo(spec.folder)
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
            for base in order:
                info = tarfile.TarInfo(f"{spec.folder}/{base}")
                info.size = len(members[base])
                tar.addfile(info, io.BytesIO(members[base]))
    else:
        folder = root / spec.folder if layout == "folder" else root
        folder.mkdir(parents=True, exist_ok=True)
        for base, data in contents.items():
            (folder / base).write_bytes(data)
    return batches


def expected(name: str, batches, part: str):
    spec = SPECS[name]
    files = spec.train_files if part == "train" else spec.test_files
    return (np.concatenate([batches[b][0] for b in files]), np.concatenate([batches[b][1] for b in files]))


# --------------------------------------------------------------------------- loading


def test_the_test_pickles_are_what_python_2_wrote():
    """The helper's bytes read back with plain pickle as the published files do (bytes keys,
    numpy.core names, Python 2 strings)."""
    images = np.arange(2 * 3072, dtype=np.uint32).astype(np.uint8).reshape(2, 3072)
    raw = py2_pickle({b"data": images, b"labels": [3, 9], b"batch_label": b"x"})
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and raw.startswith(b"\x80\x02")
    back = pickle.loads(raw, encoding="bytes")
    assert set(back) == {b"data", b"labels", b"batch_label"} and back[b"labels"] == [3, 9]
    assert back[b"data"].dtype == np.uint8 and np.array_equal(back[b"data"], images)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("layout", ["folder", "archive", "loose", "subfolder", "subfolder-archive", "subfolder-loose"])
def test_loads_exactly_the_pixels_and_labels_written(tmp_path, name, layout):
    spec = SPECS[name]
    sub = tmp_path / spec.subfolder
    where = {"subfolder": ("folder", sub), "subfolder-archive": ("archive", sub), "subfolder-loose": ("loose", sub)}
    kind, folder = where.get(layout, (layout, tmp_path))
    batches = write_set(folder, name, kind)
    loaded = LOADERS[name](str(tmp_path))
    assert loaded["num_classes"] == spec.num_classes
    for part in ("train", "test"):
        x, y = loaded[part]
        images, labels = expected(name, batches, part)
        assert x.dtype == torch.uint8 and x.shape == (len(images), 3, 32, 32) and x.is_contiguous()
        assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
        assert torch.equal(x, torch.from_numpy(images))
    # channel planes: the first 1024 bytes of a row are the red plane, row by row
    x = loaded["train"][0]
    flat = batches[spec.train_files[0]][0].reshape(-1, 3072)
    assert x[0, 0, 0, :].tolist() == flat[0, :32].tolist()  # red, top row
    assert x[0, 0, 1, 0].item() == flat[0, 32]  # red, second row
    assert x[0, 1, 0, 0].item() == flat[0, 1024] and x[0, 2, 31, 31].item() == flat[0, 3071]  # green first, blue last


def test_cifar10_train_is_the_five_batches_in_order(tmp_path):
    batches = write_set(tmp_path, "cifar10", "archive", n_per_file=3)
    x, y = load_cifar10(tmp_path)["train"]
    assert len(x) == 15
    for k in range(5):
        assert torch.equal(x[3 * k : 3 * k + 3], torch.from_numpy(batches[f"data_batch_{k + 1}"][0]))


def test_dataset_root_may_name_the_archive_itself(tmp_path):
    batches = write_set(tmp_path, "cifar100", "archive")
    loaded = load_cifar100(tmp_path / CIFAR100.archive)
    assert torch.equal(loaded["test"][0], torch.from_numpy(batches["test"][0]))


def test_the_extracted_folder_comes_before_the_archive(tmp_path):
    write_set(tmp_path, "cifar10", "archive", seed=1)
    batches = write_set(tmp_path, "cifar10", "folder", seed=2)
    assert torch.equal(load_cifar10(tmp_path)["test"][0], torch.from_numpy(batches["test_batch"][0]))


def test_files_repickled_by_python_3_load_too(tmp_path):
    """A batch written by numpy 2 / Python 3 (protocol 4 and 5: numpy._core names, _frombuffer)."""
    rng = np.random.default_rng(5)
    folder = tmp_path / CIFAR100.folder
    folder.mkdir()
    train, test = rng.integers(0, 256, (30, 3, 32, 32), dtype=np.uint8), rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    write_cifar_batch(folder / "train", train, np.arange(30), label_key="fine_labels", coarse_labels=[0] * 30)
    with open(folder / "test", "wb") as handle:
        pickle.dump({"data": test.reshape(10, -1), "fine_labels": np.arange(10) + 90}, handle, protocol=5)
    loaded = load_cifar100(tmp_path)
    assert torch.equal(loaded["train"][0], torch.from_numpy(train)) and loaded["test"][1].tolist() == list(range(90, 100))


def test_cifar100_uses_fine_labels(tmp_path):
    batches = write_set(tmp_path, "cifar100", "folder")
    y = load_cifar100(tmp_path)["train"][1]
    assert y.tolist() == batches["train"][1].tolist() and int(y.max()) > 19  # not the 20 coarse classes


def test_the_search_order_is_documented_and_listed(tmp_path):
    kinds = [kind for kind, _ in search_locations(tmp_path, CIFAR10)]
    assert kinds == ["folder", "archive", "folder", "archive", "loose", "loose"]
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    for _, path in search_locations(tmp_path, CIFAR10):
        assert str(path) in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message and "kdrun downloads nothing" in message
    assert "cifar-10-python.tar.gz" in message and "cifar-10-batches-py" in message


# --------------------------------------------------------------------------- errors


def test_missing_root_is_one_clear_error(tmp_path):
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "nowhere")
    message = str(info.value)
    assert "dataset.root" in message and "nowhere" in message and "kdrun downloads nothing" in message
    with pytest.raises(DataError, match="dataset.root is not set"):
        load_cifar(None, "cifar10")


def test_cifar100_never_reads_cifar10(tmp_path):
    write_set(tmp_path, "cifar10", "folder")
    with pytest.raises(DataError, match="cifar-100-python"):
        load_cifar100(tmp_path)


@pytest.mark.parametrize("layout", ["folder", "archive"])
def test_a_missing_batch_is_named(tmp_path, layout):
    write_set(tmp_path, "cifar10", layout, skip=("data_batch_3",))
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert "data_batch_3" in message and ("cifar-10-batches-py" in message) and str(tmp_path) in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message


def _damage(tmp_path, base: bytes, layout: str = "folder", name: str = "cifar10", target: str = "test_batch"):
    write_set(tmp_path, name, layout, extra={target: base})
    with pytest.raises(DataError) as info:
        LOADERS[name](tmp_path)
    return str(info.value)


def _labels_and_images(n=20, labels=None, data=None, key=b"labels"):
    return py2_pickle({b"data": np.zeros((n, 3072), np.uint8) if data is None else data, key: list(range(n)) if labels is None else labels})


@pytest.mark.parametrize("layout", ["folder", "archive"])
@pytest.mark.parametrize(
    "content, says",
    [
        (b"this is not a pickle at all", "not a CIFAR-10 python-version batch"),
        (b"", "truncated"),
        (pickle.dumps([1, 2, 3], protocol=2), "holds a list"),
        (py2_pickle({b"data": np.zeros((20, 3072), np.uint8)}), "no b'labels'"),
        (py2_pickle({b"labels": [0] * 20}), "no b'data'"),
        (_labels_and_images(data=np.zeros((20, 1024), np.uint8)), "uint8 array [n, 3072]"),
        (_labels_and_images(data=np.zeros((20, 3, 32, 32), np.uint8)), "uint8 array [n, 3072]"),
        (_labels_and_images(labels=[0] * 19), "must be 20 integer class ids"),
        (_labels_and_images(labels=[0] * 19 + [10]), "must lie in 0..9, found 0..10"),
        (_labels_and_images(labels=[0] * 19 + [-1]), "must lie in 0..9"),
        (_labels_and_images()[:-4000], "truncated"),
        (_labels_and_images() + b"junk", "bytes follow the end of the pickle"),
    ],
    ids=["garbage", "empty", "list", "no-labels", "no-data", "short-rows", "4d", "count", "label-10", "label-neg", "truncated", "trailing"],
)
def test_damaged_batch_names_the_file(tmp_path, layout, content, says):
    message = _damage(tmp_path, content, layout)
    assert "test_batch" in message and says in message, message
    if layout == "archive":
        assert f"{CIFAR10.archive} (member cifar-10-batches-py/test_batch)" in message


def test_cifar100_labels_are_checked_against_100_classes(tmp_path):
    message = _damage(tmp_path, _labels_and_images(labels=[100] * 20, key=b"fine_labels"), name="cifar100", target="test")
    assert str(tmp_path / "cifar-100-python" / "test") in message and "0..99" in message


@pytest.mark.parametrize("cut", [0.3, 0.7, 0.95])
def test_truncated_archive(tmp_path, cut):
    write_set(tmp_path, "cifar10", "archive")
    path = tmp_path / CIFAR10.archive
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert str(path) in message and ("truncated" in message or "has no" in message)


def test_an_archive_that_is_not_gzip(tmp_path):
    (tmp_path / CIFAR100.archive).write_bytes(b"PK\x03\x04 a zip file" * 10)
    with pytest.raises(DataError, match=r"cifar-100-python.tar.gz: truncated or damaged archive"):
        load_cifar100(tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


class _Evaluates:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("layout", ["folder", "archive"])
@pytest.mark.parametrize("payload, refused", [(_RunsCode(), "system"), (_Evaluates(), "builtins.eval")])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch, layout, payload, refused):
    monkeypatch.chdir(tmp_path)
    malicious = pickle.dumps({b"data": np.zeros((20, 3072), np.uint8), b"labels": payload}, protocol=4)
    message = _damage(tmp_path, malicious, layout)
    assert "refused" in message and refused in message and "test_batch" in message
    assert not (tmp_path / "pwned.txt").exists()


def test_a_python_2_pickle_naming_another_global_is_refused(tmp_path):
    """The published files' opcodes (GLOBAL) with a module that is not numpy's."""
    evil = b"\x80\x02}(U\x04datacposix\nsystem\nU\x04true\x85Ru."
    message = _damage(tmp_path, evil)
    assert "refused: the pickle asks for posix.system" in message and str(tmp_path / "cifar-10-batches-py" / "test_batch") in message


# --------------------------------------------------------------------------- augmentation


def reference(x: torch.Tensor, params: CropFlip, padding: int, fill=0) -> torch.Tensor:
    """One image at a time: pad, cut the window at (dy, dx), mirror if drawn."""
    out = []
    for b in range(len(x)):
        padded = F.pad(x[b], (padding, padding, padding, padding), value=fill)
        dy, dx = int(params.dy[b]), int(params.dx[b])
        window = padded[:, dy : dy + x.shape[2], dx : dx + x.shape[3]]
        out.append(window.flip(2) if params.flip[b] else window)
    return torch.stack(out) if out else x.clone()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("padding", [0, 1, 4])
def test_crops_are_windows_of_the_padded_image(dtype, padding):
    x = torch.randint(0, 256, (64, 3, 32, 32)).to(dtype)
    params = crop_flip_params(64, torch.Generator().manual_seed(1), padding)
    out = crop_flip(x, params, padding)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.equal(out, reference(x, params, padding))
    fill = 7 if dtype == torch.uint8 else -0.5
    assert torch.equal(crop_flip(x, params, padding, fill=fill), reference(x, params, padding, fill=fill))


def test_random_crop_flip_draws_from_the_generator_then_applies():
    x = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(11)
    state = generator.get_state()
    out = random_crop_flip(x, generator)
    generator.set_state(state)
    assert torch.equal(out, reference(x, crop_flip_params(50, generator), 4))


def test_other_shapes_layouts_and_an_empty_batch():
    x = torch.arange(2 * 5 * 9, dtype=torch.float32).view(2, 1, 5, 9)
    params = CropFlip(torch.tensor([0, 4]), torch.tensor([8, 2]), torch.tensor([True, False]))
    assert torch.equal(crop_flip(x, params, 4), reference(x, params, 4))
    image = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    params = crop_flip_params(8, torch.Generator().manual_seed(0))
    assert torch.equal(crop_flip(image.contiguous(memory_format=torch.channels_last), params), reference(image, params, 4))
    assert torch.equal(crop_flip(image[:, :, :, :], params), crop_flip(image.clone(), params))
    empty = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    assert random_crop_flip(empty, torch.Generator().manual_seed(0)).shape == (0, 3, 32, 32)


def test_flips_and_shifts():
    x = torch.arange(32, dtype=torch.float32).expand(1, 1, 32, 32).clone()  # pixel value = its column
    centred = CropFlip(torch.tensor([4]), torch.tensor([4]), torch.tensor([False]))
    assert torch.equal(crop_flip(x, centred), x)  # the centre window is the image
    mirrored = crop_flip(x, centred._replace(flip=torch.tensor([True])))
    assert mirrored[0, 0, 0].tolist() == list(range(31, -1, -1))
    shifted = crop_flip(x, CropFlip(torch.tensor([0]), torch.tensor([0]), torch.tensor([False])))
    assert shifted[0, 0, 4].tolist() == [0] * 4 + list(range(28))  # top-left window: 4 rows and columns of padding
    assert shifted[0, 0, :4].abs().sum() == 0 and torch.equal(shifted[0, 0, 4:, 4:], x[0, 0, :28, :28])


def test_every_offset_and_both_flips_are_drawn():
    params = crop_flip_params(4000, torch.Generator().manual_seed(0))
    assert set(params.dy.tolist()) == set(range(9)) == set(params.dx.tolist())
    assert 0.45 < params.flip.float().mean().item() < 0.55
    assert params.dy.device.type == "cpu" and params.flip.dtype == torch.bool


def test_deterministic_given_the_generator_and_different_for_other_seeds():
    x = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    first = random_crop_flip(x, torch.Generator().manual_seed(3))
    assert torch.equal(first, random_crop_flip(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, random_crop_flip(x, torch.Generator().manual_seed(4)))
    generator = torch.Generator().manual_seed(3)
    random_crop_flip(x, generator)
    assert not torch.equal(first, random_crop_flip(x, generator))  # the generator moves on


def test_two_generators_seeded_alike_give_two_students_the_same_batches():
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    batches = [images[:128], images[128:]]
    one, two = torch.Generator().manual_seed(42), torch.Generator().manual_seed(42)
    seen_one = [random_crop_flip(b, one) for b in batches]
    seen_two = [random_crop_flip(b.float().clone(), two) for b in batches]  # another copy, another dtype
    for a, b in zip(seen_one, seen_two):
        assert torch.equal(a.float(), b)
    # the second batch has draws of its own: not those a fresh generator gives the first batch
    fresh = crop_flip_params(128, torch.Generator().manual_seed(42))
    assert not torch.equal(seen_one[1], crop_flip(batches[1], fresh))


def test_bad_arguments():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        random_crop_flip(torch.zeros(3, 32, 32), generator)
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(torch.zeros(1, 3, 32, 32), generator, padding=-1)
    with pytest.raises(ValueError, match="3 draws for a batch of 2"):
        crop_flip(torch.zeros(2, 3, 32, 32), crop_flip_params(3, generator))


# --------------------------------------------------------------------------- the recipe presets and a run


CONF = Path(__file__).resolve().parents[1] / "conf"
PAIRS = sorted(p.stem for p in (CONF / "model").glob("*_*.yaml"))


def test_the_benchmark_recipe_and_each_pair_preset_compose():
    from kdrun.config import compose

    cfg = compose(["experiment=cifar100_kd"])
    assert (cfg.dataset.name, cfg.dataset.val_fraction, cfg.dataset.augment) == ("cifar100", 0.1, True)
    trainer = cfg.trainer
    assert (trainer.optimizer, trainer.lr, trainer.momentum, trainer.weight_decay, trainer.batch_size, trainer.epochs) == ("sgd", 0.05, 0.9, 5e-4, 64, 240)
    assert (trainer.scheduler, list(trainer.milestones), trainer.gamma) == ("multistep", [150, 180, 210], 0.1)
    assert (cfg.loss.alpha, cfg.loss.temperature) == (0.9, 4)
    for method, defaults in (("dkd", {"alpha": 1.0, "beta": 8.0}), ("dist", {"beta": 2.0, "gamma": 2.0, "temperature": 1.0}), ("dist_cifar", {"beta": 2.0, "gamma": 2.0, "temperature": 4.0})):
        loss = compose(["experiment=cifar100_kd", f"loss={method}"]).loss
        assert {key: loss[key] for key in defaults} == defaults, method
    assert len(PAIRS) == 13
    for pair in PAIRS:
        composed = compose(["experiment=cifar100_kd", f"model={pair}"])
        teacher, student = (composed.model[role]._target_.rsplit(".", 1)[1] for role in ("teacher", "student"))
        assert pair == f"{teacher}_{student}"
        low = student in ("mobilenetv2", "shufflev1", "shufflev2")
        assert composed.trainer.lr == (0.01 if low else 0.05), pair
        dkd_beta = {"resnet56_resnet20": 2.0, "resnet110_resnet32": 2.0, "wrn_40_2_wrn_16_2": 6.0, "wrn_40_2_wrn_40_1": 6.0, "vgg13_vgg8": 6.0,
                    "vgg13_mobilenetv2": 6.0}.get(pair, 8.0)  # DKD's paper (mdistiller's configs/cifar100/dkd/)
        assert compose(["experiment=cifar100_kd", f"model={pair}", "loss=dkd"]).loss.beta == dkd_beta, pair


def test_help_shows_an_interpolated_settings_value_and_its_source():
    from kdrun.app import config_dir
    from kdrun.help import train_help

    page = train_help(["experiment=cifar100_kd", "model=resnet56_resnet20", "loss=dkd"], config_dir()).splitlines()
    for key, value, source in (("loss.beta", "2.0", "${model.recipe_dkd_beta}"), ("trainer.lr", "0.05", "${model.recipe_lr}")):
        line = next(line for line in page if line.strip().startswith(key + " "))
        assert line.split()[1] == value and line.endswith(f"(here {source})"), line  # was the bare ${...}


def test_a_bad_value_a_preset_interpolates_names_the_setting_to_change():
    """trainer.lr is ${model.recipe_lr} in the recipe: model.recipe_lr=-1 named only trainer.lr."""
    from kdrun.config import compose, validate
    from kdrun.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        validate(compose(["experiment=cifar100_kd", "model.recipe_lr=-1"]))
    assert str(error.value) == (
        "trainer.lr=-1.0 is not allowed: a finite number > 0 (trainer.lr is ${model.recipe_lr} here: the value to change is model.recipe_lr)"
    )


def test_data_with_a_published_test_split_is_not_held_to_test_fraction():
    """dataset.val_fraction=0.9 of CIFAR's training split was refused for summing to 1.05 with a
    test_fraction the published test split leaves unused."""
    from kdrun.config import compose, validate
    from kdrun.errors import ConfigError

    for dataset in ("cifar10", "mnist"):
        validate(compose([f"dataset={dataset}", "dataset.val_fraction=0.9"]))
    with pytest.raises(ConfigError, match="dataset.val_fraction \\+ dataset.test_fraction=1.05 is not allowed"):
        validate(compose(["dataset=digits", "dataset.val_fraction=0.9"]))  # one pool: kdrun carves the test split


def test_a_cifar_run_through_the_cli_with_augmentation(tmp_path):
    from conftest import has_traceback, run_kdrun

    write_set(tmp_path / "data", "cifar100", layout="archive", n_per_file=40)  # 200 train, 40 test
    run = tmp_path / "run"
    result = run_kdrun(
        "train", "experiment=cifar100_kd", f"dataset.root={tmp_path / 'data'}", "model/teacher=resnet8",
        "model/student=resnet8", "trainer.epochs=2", "trainer.milestones=[1]", "trainer.batch_size=32", "plots=false",
        f"hydra.run.dir={run}", cwd=tmp_path, tiny=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not has_traceback(result.stderr)
    import csv

    with open(run / "summary.csv", newline="") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"teacher", "distilled", "baseline"}
    assert all(row["dataset"] == "cifar100" and 0 <= float(row["test_acc"]) <= 1 for row in rows.values())
    checkpoint = torch.load(run / "distilled.pt", weights_only=True)
    assert len(checkpoint["normalization"]["mean"]) == 3  # per channel


def test_missing_cifar_files_through_the_cli_are_one_message(tmp_path):
    from conftest import has_traceback, run_kdrun

    result = run_kdrun("train", "dataset=cifar10", f"dataset.root={tmp_path}", "model/teacher=resnet8", "model/student=resnet8",
                       "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, tiny=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "cifar-10-python.tar.gz" in result.stderr and "downloads nothing" in result.stderr
    assert not has_traceback(result.stderr)
