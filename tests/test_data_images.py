"""CIFAR-10/100 and ImageNet through torchvision's real loaders, on small files in the real formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_cfg
from fixtures_images import CifarFiles, patch_cifar_md5, write_cifar, write_imagenet
from PIL import Image
from torchvision import datasets
from torchvision import transforms as T

from seal_exp.config import ConfigError, build
from seal_exp.data import make_loader
from seal_exp.data.augment import Cutout
from seal_exp.data.source import MissingDataset
from seal_exp.train import train

WNIDS = ["n01440764", "n01443537", "n01484850"]
C10_MEAN, C10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IN_MEAN, IN_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# ImageNet at a size CPU tests can afford; fixture photos are 40×48 (height × width)
SMALL_IMAGENET = (
    "dataset.num_classes=3",
    "dataset.image_size=32",
    "dataset.resize=36",
    "dataset.augment.cutout=16",
)
# the default teacher/student architectures, narrowed (and smaller batches) so that a smoke run takes
# seconds on 2 busy cores
SMALL_NETS = (
    "neuron.T=2",
    "student.channels=[8,16]",
    "teacher.model.channels=[8,16]",
    "trainer.batch_size=8",
    "teacher.recipe.batch_size=8",
    "trainer.eval_batch_size=32",
    "teacher.recipe.eval_batch_size=32",
    "trainer.limit_eval_batches=1",
    "teacher.recipe.limit_eval_batches=1",
)
ALL_OFF = ("crop=false", "flip=false", "autoaugment=false", "cutout=0")


@pytest.fixture(scope="module")
def c10_files(tmp_path_factory: pytest.TempPathFactory) -> CifarFiles:
    return write_cifar(tmp_path_factory.mktemp("cifar10"), 10, per_class_train=20, per_class_test=5, seed=0)


@pytest.fixture(scope="module")
def c100_files(tmp_path_factory: pytest.TempPathFactory) -> CifarFiles:
    return write_cifar(tmp_path_factory.mktemp("cifar100"), 100, per_class_train=4, per_class_test=2, seed=1)


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagenet(tmp_path_factory.mktemp("imagenet"), WNIDS, per_class_train=10, per_class_val=4)


@pytest.fixture
def c10(c10_files: CifarFiles, monkeypatch: pytest.MonkeyPatch) -> CifarFiles:
    patch_cifar_md5(monkeypatch, c10_files)
    return c10_files


@pytest.fixture
def c100(c100_files: CifarFiles, monkeypatch: pytest.MonkeyPatch) -> CifarFiles:
    patch_cifar_md5(monkeypatch, c100_files)
    return c100_files


def cfg_for(tmp: Path, dataset: str, root: Path, *overrides: str):
    return make_cfg(tmp, [f"dataset={dataset}", f"dataset.root={root}", *overrides])


def source(tmp: Path, dataset: str, root: Path, *overrides: str):
    return build(cfg_for(tmp, dataset, root, *overrides).dataset, "dataset")


def normalised(hwc_uint8: np.ndarray, mean: tuple, std: tuple) -> torch.Tensor:
    """ToTensor + Normalize computed by hand: [H, W, 3] uint8 → [3, H, W] float32."""
    x = hwc_uint8.astype(np.float64) / 255.0
    x = (x - np.array(mean)) / np.array(std)
    return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))


def step_types(transform: T.Compose) -> list[type]:
    return [type(t) for t in transform.transforms]


# --- parts, shapes, labels, split sizes -------------------------------------------------------------


def test_cifar10_parts_shapes_labels_and_split_sizes(c10: CifarFiles, tmp_path: Path) -> None:
    data = source(tmp_path, "cifar10", c10.root).load()
    assert (len(data.train), len(data.val), len(data.test)) == (180, 20, 50)
    assert not data.val_is_test and not data.time_major
    train_idx, val_idx = data.train.indices, data.val.indices
    assert np.intersect1d(train_idx, val_idx).size == 0
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(200))
    assert np.bincount(c10.train_labels[val_idx], minlength=10).tolist() == [2] * 10  # stratified
    assert np.array_equal(data.teacher_train.indices, train_idx)
    for part, labels in (
        (data.train, c10.train_labels),
        (data.val, c10.train_labels),
        (data.test, c10.test_labels),
    ):
        for i in (0, len(part) - 1):
            x, y = part[i]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
            assert isinstance(y, int) and y == labels[part.indices[i]]
    assert np.array_equal(np.asarray(data.test.base.targets), c10.test_labels)  # labels via .targets
    assert data.test.base.classes[0] == "airplane"

    whole = source(tmp_path, "cifar10", c10.root, "dataset.val_fraction=0").load()
    assert (len(whole.train), len(whole.test)) == (200, 50)
    assert whole.val is whole.test and whole.val_is_test
    assert whole.split_id != data.split_id


def test_cifar100_parts_and_labels(c100: CifarFiles, tmp_path: Path) -> None:
    data = source(tmp_path, "cifar100", c100.root, "dataset.val_fraction=0.25").load()
    assert (len(data.train), len(data.val), len(data.test)) == (300, 100, 200)
    assert np.bincount(c100.train_labels[data.val.indices], minlength=100).tolist() == [1] * 100
    labels = [data.test[i][1] for i in range(len(data.test))]
    assert labels == c100.test_labels.tolist() and min(labels) == 0 and max(labels) == 99
    x, _ = data.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # 4 images per class, 10 % of each rounds to none: refused, not an empty validation part
    with pytest.raises(ConfigError, match=r"dataset.val_fraction=0.1 is invalid: holds out no image"):
        source(tmp_path, "cifar100", c100.root).load()


def test_imagenet_parts_shapes_labels_and_split_sizes(imagenet_root: Path, tmp_path: Path) -> None:
    src = source(tmp_path, "imagenet", imagenet_root, *SMALL_IMAGENET, "dataset.val_fraction=0.2")
    data = src.load()
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 12)
    assert data.test.base.classes == WNIDS
    train_labels = np.asarray(data.train.base.targets)
    assert np.bincount(train_labels[data.val.indices]).tolist() == [2, 2, 2]
    assert np.intersect1d(data.train.indices, data.val.indices).size == 0
    # the evaluation parts are mixed, so the first few images already cover every class
    assert {data.test[i][1] for i in range(6)} == {0, 1, 2}
    assert sorted(data.test.indices.tolist()) == list(range(12))
    for part in (data.train, data.val, data.test, data.teacher_train):
        x, y = part[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 3
    whole = source(tmp_path, "imagenet", imagenet_root, *SMALL_IMAGENET, "dataset.val_fraction=0").load()
    assert len(whole.train) == 30 and whole.val is whole.test and whole.val_is_test
    with pytest.raises(ConfigError, match="holds out no image"):  # the default 1 % of 10 per class
        source(tmp_path, "imagenet", imagenet_root, *SMALL_IMAGENET).load()


# --- determinism --------------------------------------------------------------------------------------


def test_split_and_batches_are_deterministic(c10: CifarFiles, tmp_path: Path) -> None:
    a = source(tmp_path, "cifar10", c10.root).load()
    b = source(tmp_path, "cifar10", c10.root).load()
    assert a.split_id == b.split_id and np.array_equal(a.val.indices, b.val.indices)
    assert source(tmp_path, "cifar10", c10.root, "dataset.split_seed=1").load().split_id != a.split_id

    def first_batch(data, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        # with workers, as file-backed data is served: each worker's augmentation is seeded from `seed`
        return next(iter(make_loader(data.train, 16, shuffle=True, seed=seed, num_workers=2)))

    (xa, ya), (xb, yb) = first_batch(a, 0), first_batch(b, 0)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order = [next(iter(make_loader(a.train, 16, shuffle=True, seed=s).batch_sampler)) for s in (0, 0, 1)]
    assert order[0] == order[1] != order[2]


# --- augmentation in training only ---------------------------------------------------------------------


def test_eval_parts_are_the_normalised_pixels_and_train_is_augmented(c10: CifarFiles, tmp_path: Path) -> None:
    data = source(tmp_path, "cifar10", c10.root).load()
    torch.manual_seed(0)
    for part, images in ((data.val, c10.train_images), (data.test, c10.test_images)):
        for i in range(5):
            x = part[i][0]
            assert torch.equal(x, part[i][0])
            expected = normalised(images[part.indices[i]], C10_MEAN, C10_STD)
            torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    for i in range(5):
        assert not torch.equal(data.train[i][0], data.train[i][0])


def test_imagenet_eval_is_resize_then_centre_crop(imagenet_root: Path, tmp_path: Path) -> None:
    # resize = the photos' short side (40): Resize keeps the pixels, CenterCrop(32) of 40×48 takes rows
    # 4..35 and columns 8..39 of the decoded JPEG
    overrides = (*SMALL_IMAGENET, "dataset.resize=40", "dataset.val_fraction=0.2")
    data = source(tmp_path, "imagenet", imagenet_root, *overrides).load()
    for part in (data.test, data.val):
        for i in range(3):
            path = part.base.samples[part.indices[i]][0]
            decoded = np.asarray(Image.open(path).convert("RGB"))
            assert decoded.shape == (40, 48, 3)
            expected = normalised(decoded[4:36, 8:40], IN_MEAN, IN_STD)
            torch.testing.assert_close(part[i][0], expected, atol=1e-5, rtol=0)
    torch.manual_seed(0)
    assert not torch.equal(data.train[0][0], data.train[0][0])
    resized = source(tmp_path, "imagenet", imagenet_root, *SMALL_IMAGENET, "dataset.val_fraction=0.2").load()
    assert not torch.allclose(resized.test[0][0], data.test[0][0])  # resize=36 really resizes


def test_cutout_alone_zeroes_one_square_before_normalisation(c10: CifarFiles, tmp_path: Path) -> None:
    aug = [f"dataset.augment.{s}" for s in ALL_OFF[:3]] + ["dataset.augment.cutout=16"]
    data = source(tmp_path, "cifar10", c10.root, *aug).load()
    assert step_types(data.train.transform) == [T.ToTensor, Cutout, T.Normalize]
    zero = (-torch.tensor(C10_MEAN) / torch.tensor(C10_STD)).view(3, 1)  # a black pixel, normalised
    torch.manual_seed(0)
    full_squares = 0
    for i in range(12):
        x = data.train[i][0]
        expected = normalised(c10.train_images[data.train.indices[i]], C10_MEAN, C10_STD)
        hole = (x * torch.tensor(C10_STD).view(3, 1, 1) + torch.tensor(C10_MEAN).view(3, 1, 1)).abs().amax(0)
        hole = hole < 1e-6
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
        assert int(hole.sum()) == h * w, "the hole is one filled rectangle"
        assert 8 <= h <= 16 and 8 <= w <= 16, "a 16-pixel square, clipped at most to half at a border"
        full_squares += h == w == 16
        torch.testing.assert_close(x[:, hole], zero.expand(3, h * w), atol=1e-5, rtol=0)
        torch.testing.assert_close(x[:, ~hole], expected[:, ~hole], atol=1e-5, rtol=0)
    assert full_squares > 0


def test_random_erasing_alone_erases_after_normalisation(c10: CifarFiles, tmp_path: Path) -> None:
    """The SAMD/NLD recipe's RandomErasing: after Normalize, so the erased box is 0 in normalised units
    (not a black pixel), covering a share of the image inside ``erasing_scale``; p is the switch."""
    aug = [f"dataset.augment.{s}" for s in ALL_OFF] + [
        "dataset.augment.erasing=1.0",
        "dataset.augment.erasing_scale=[0.02,0.2]",
    ]
    data = source(tmp_path, "cifar10", c10.root, *aug).load()
    assert step_types(data.train.transform) == [T.ToTensor, T.Normalize, T.RandomErasing]
    erasing = data.train.transform.transforms[-1]
    assert (erasing.p, erasing.scale, erasing.value) == (1.0, (0.02, 0.2), 0)
    torch.manual_seed(0)
    for i in range(8):
        x = data.train[i][0]
        expected = normalised(c10.train_images[data.train.indices[i]], C10_MEAN, C10_STD)
        changed = (x - expected).abs().amax(0) > 1e-5
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert 0.02 * 1024 * 0.5 <= h * w <= 0.2 * 1024 * 1.5, "the box's area lies inside the scale range"
        y0, x0 = int(rows.min()), int(cols.min())
        assert (x[:, y0 : y0 + h, x0 : x0 + w] == 0).all(), "the box is zero after normalisation"
        torch.testing.assert_close(x[:, ~changed], expected[:, ~changed], atol=1e-5, rtol=0)
    never = source(tmp_path, "cifar10", c10.root, *aug[:-2], "dataset.augment.erasing=0.0")
    assert T.RandomErasing not in step_types(never.train_transform)  # 0 switches it off
    assert T.RandomErasing not in step_types(never.teacher_transform)  # never in the teacher's recipe
    for bad, key in (("erasing=1.5", "erasing"), ("erasing_scale=[0.3,0.1]", "erasing_scale")):
        with pytest.raises(ConfigError, match=rf"dataset\.augment\.{key}=.* is invalid"):
            source(tmp_path, "cifar10", c10.root, f"dataset.augment.{bad}")


# --- switches and the teacher's pipeline ----------------------------------------------------------------

CIFAR_STEPS = {
    "crop": T.RandomCrop,
    "flip": T.RandomHorizontalFlip,
    "autoaugment": T.AutoAugment,
    "cutout": Cutout,
}
IMAGENET_STEPS = {**CIFAR_STEPS, "crop": T.RandomResizedCrop}


@pytest.mark.parametrize("switch", ["crop", "flip", "autoaugment", "cutout"])
def test_each_switch_off_removes_its_step(
    switch: str, c10: CifarFiles, imagenet_root: Path, tmp_path: Path
) -> None:
    off = "cutout=0" if switch == "cutout" else f"{switch}=false"
    for dataset, root, steps, extra in (
        ("cifar10", c10.root, CIFAR_STEPS, ()),
        ("imagenet", imagenet_root, IMAGENET_STEPS, ("dataset.num_classes=3",)),
    ):
        full = step_types(source(tmp_path, dataset, root, *extra).train_transform)
        assert set(steps.values()) <= set(full)
        reduced = step_types(
            source(tmp_path, dataset, root, *extra, f"dataset.augment.{off}").train_transform
        )
        assert steps[switch] not in reduced
        assert {t for k, t in steps.items() if k != switch} <= set(reduced)


def test_reference_pipelines_as_published(c10: CifarFiles, imagenet_root: Path, tmp_path: Path) -> None:
    steps = source(tmp_path, "cifar10", c10.root).train_transform.transforms
    assert [type(t) for t in steps] == [
        T.RandomCrop, T.RandomHorizontalFlip, T.AutoAugment, T.ToTensor, Cutout, T.Normalize
    ]  # fmt: skip
    assert steps[0].size == (32, 32) and steps[0].padding == 4
    assert steps[2].policy == T.AutoAugmentPolicy.CIFAR10 and steps[4].size == 16
    src = source(tmp_path, "imagenet", imagenet_root, "dataset.num_classes=3")
    steps = src.train_transform.transforms
    assert [type(t) for t in steps] == [
        T.RandomResizedCrop, T.RandomHorizontalFlip, T.AutoAugment, T.ToTensor, Cutout, T.Normalize
    ]  # fmt: skip
    assert steps[0].size == (224, 224) and steps[2].policy == T.AutoAugmentPolicy.IMAGENET
    assert steps[4].size == 112 and tuple(steps[5].mean) == IN_MEAN
    assert step_types(src.eval_transform) == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert src.eval_transform.transforms[0].size == 256 and src.eval_transform.transforms[1].size == (
        224,
        224,
    )


def test_all_switches_off_train_equals_eval(c10: CifarFiles, tmp_path: Path) -> None:
    data = source(tmp_path, "cifar10", c10.root, *(f"dataset.augment.{s}" for s in ALL_OFF)).load()
    for i in range(5):
        torch.testing.assert_close(
            data.train[i][0],
            normalised(c10.train_images[data.train.indices[i]], C10_MEAN, C10_STD),
            atol=1e-5,
            rtol=0,
        )


def test_teacher_pipeline_is_crop_and_flip_only(c10: CifarFiles, imagenet_root: Path, tmp_path: Path) -> None:
    data = source(tmp_path, "cifar10", c10.root).load()
    assert step_types(data.teacher_train.transform) == [
        T.RandomCrop,
        T.RandomHorizontalFlip,
        T.ToTensor,
        T.Normalize,
    ]
    inet = source(tmp_path, "imagenet", imagenet_root, *SMALL_IMAGENET, "dataset.val_fraction=0.2").load()
    assert step_types(inet.teacher_train.transform) == [
        T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize
    ]  # fmt: skip
    assert np.array_equal(inet.teacher_train.indices, inet.train.indices)
    same = [f"dataset.teacher_augment.{k}={v}" for k, v in (("autoaugment", "true"), ("cutout", "16"))]
    assert source(tmp_path, "cifar10", c10.root, *same).load().teacher_train is None  # same as the student's


# --- refusals ----------------------------------------------------------------------------------------------


def test_missing_cifar_names_folder_layout_and_source(
    c10: CifarFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "nothing"
    with pytest.raises(MissingDataset) as err:
        source(tmp_path, "cifar10", empty)
    msg = str(err.value)
    assert f"no folder cifar-10-batches-py/ in {empty}" in msg
    for text in (
        "data_batch_5",
        "test_batch",
        "batches.meta",
        "https://www.cs.toronto.edu/~kriz/cifar.html",
        "cifar-10-python.tar.gz",
    ):
        assert text in msg
    with pytest.raises(MissingDataset, match="no folder cifar-100-python/"):
        source(tmp_path, "cifar100", empty)

    partial = tmp_path / "partial"
    shutil.copytree(c10.root, partial)
    (partial / "cifar-10-batches-py" / "data_batch_3").unlink()
    (partial / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(MissingDataset, match=r"is incomplete: missing data_batch_3, batches.meta\n"):
        source(tmp_path, "cifar10", partial)

    # train() stops before anything is read: torchvision's loader must never be reached
    def no_read(*args, **kwargs):
        raise AssertionError("data was read")

    monkeypatch.setattr(datasets.CIFAR10, "__init__", no_read)
    cfg = cfg_for(tmp_path, "cifar10", partial, "debug=smoke", "tracking=none")
    with pytest.raises(MissingDataset, match="data_batch_3"):
        train(cfg)
    assert not (tmp_path / "out").exists()


def test_corrupted_cifar_files_are_refused(c10_files: CifarFiles, tmp_path: Path) -> None:
    # without patch_cifar_md5 the written files fail torchvision's real md5 check
    with pytest.raises(MissingDataset, match="fail torchvision's checksum test"):
        source(tmp_path, "cifar10", c10_files.root).load()


def test_missing_or_inconsistent_imagenet(
    imagenet_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(root: Path, *extra: str) -> str:
        with pytest.raises(MissingDataset) as err:
            source(tmp_path, "imagenet", root, *extra)
        return str(err.value)

    msg = refused(tmp_path / "nothing")
    for text in ("no train/ and no val/ folder", "train/<wnid>/*.JPEG", "https://image-net.org", "valprep"):
        assert text in msg
    assert "found 3 class folders in train/ and val/, but dataset.num_classes=1000" in refused(imagenet_root)

    broken = tmp_path / "broken"
    shutil.copytree(imagenet_root / "train", broken / "train")
    (broken / "val").mkdir()
    for f in (imagenet_root / "val").rglob("*.JPEG"):
        shutil.copy(f, broken / "val" / f.name)  # the official val tar: loose, unsorted images
    assert "the images lie loose in val/" in refused(broken, "dataset.num_classes=3")
    shutil.rmtree(broken / "val")
    shutil.copytree(imagenet_root / "val", broken / "val")
    shutil.rmtree(broken / "val" / WNIDS[2])
    (broken / "val" / "n99999999").mkdir()
    assert f"different class folders: 1 only in train/ ({WNIDS[2]}), 1 only in val/ (n99999999)" in refused(
        broken, "dataset.num_classes=3"
    )

    def no_read(*args, **kwargs):
        raise AssertionError("data was read")

    monkeypatch.setattr(datasets.ImageFolder, "__init__", no_read)
    with pytest.raises(MissingDataset, match="only in val/"):
        train(cfg_for(tmp_path, "imagenet", broken, "dataset.num_classes=3", "debug=smoke", "tracking=none"))


def test_bad_values_name_their_key(c10: CifarFiles, imagenet_root: Path, tmp_path: Path) -> None:
    cases = [
        (
            ("dataset.dataset_class._target_=torchvision.datasets.CIFAR100",),
            r"dataset.num_classes=10 is invalid: torchvision.datasets.cifar.CIFAR100 has 100 classes",
        ),
        (("dataset.image_size=64",), r"dataset.image_size=64 is invalid"),
        (("+dataset.augment.blur=true",), r"dataset.augment.blur=True is invalid: not a known switch"),
        (("dataset.mean=[0.5,0.5]",), r"dataset.mean=\[0.5, 0.5\] is invalid"),
    ]  # fmt: skip
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            source(tmp_path, "cifar10", c10.root, *overrides)
    with pytest.raises(ConfigError, match=r"dataset.augment.cutout=112 is invalid: the hole must fit"):
        source(tmp_path, "imagenet", imagenet_root, "dataset.num_classes=3", "dataset.image_size=32")
    with pytest.raises(ConfigError, match=r"dataset.resize=16 is invalid"):
        source(tmp_path, "imagenet", imagenet_root, *SMALL_IMAGENET, "dataset.resize=16")


# --- end to end -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagenet"])
def test_smoke_run(dataset: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if dataset == "imagenet":
        root, extra = request.getfixturevalue("imagenet_root"), (*SMALL_IMAGENET, "dataset.val_fraction=0.2")
    else:
        files = request.getfixturevalue("c10" if dataset == "cifar10" else "c100")
        root, extra = files.root, ("dataset.val_fraction=0.25",) if dataset == "cifar100" else ()
    # cifar10 keeps trainer.num_workers=auto (loader worker processes, as real runs use)
    workers = () if dataset == "cifar10" else ("trainer.num_workers=0",)
    cfg = cfg_for(tmp_path, dataset, root, "debug=smoke", "tracking=none", *SMALL_NETS, *workers, *extra)
    summary = train(cfg)
    assert 0 <= summary["test_acc"] <= 100 and 0 <= summary["teacher_test_acc"] <= 100
    assert summary["dataset"] == dataset
    assert isinstance(summary["data_split_id"], str) and len(summary["data_split_id"]) == 12
