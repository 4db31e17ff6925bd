"""The data's fingerprint: what a result, a ``last.pt`` or a cached teacher was trained on, so pointing
``dataset.root`` at other data never reports, resumes or distils from the old data's results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fixtures_images import write_cifar, write_imagenet

from seal_exp.config import ConfigError, build
from seal_exp.data.embedded import Digits, MNIST5k
from seal_exp.data.mnist5k_dvs import MNIST5kDVS
from seal_exp.train import train
from tests.conftest import make_cfg, tracked_runs

WNIDS = ["n01440764", "n01443537", "n01484850"]
SMALL = (
    "dataset=imagenet",
    "dataset.num_classes=3",
    "dataset.image_size=32",
    "dataset.resize=36",
    "dataset.augment.cutout=16",
    "dataset.val_fraction=0.2",
    "debug=smoke",
    "neuron.T=2",
    "student.channels=[8,16]",
    "teacher.model.channels=[8,16]",
    "trainer.batch_size=8",
    "teacher.recipe.batch_size=8",
    "trainer.num_workers=0",
)


def dataset(tmp: Path, name: str, root: Path, *overrides: str):
    return build(make_cfg(tmp, [f"dataset={name}", f"dataset.root={root}", *overrides]).dataset, "dataset")


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagenet(tmp_path_factory.mktemp("imagenet"), WNIDS, per_class_train=6, per_class_val=3)


def moved(source: Path, to: Path) -> Path:
    """A copy of ``source`` with one test image moved to another class: other labels, same bytes."""
    shutil.copytree(source, to)
    first = sorted((to / "val" / WNIDS[0]).iterdir())[0]
    first.rename(to / "val" / WNIDS[1] / first.name)
    return to


def test_cifar_fingerprint_follows_the_bytes_not_the_folder(tmp_path):
    a = write_cifar(tmp_path / "a", 10, per_class_train=2, per_class_test=1, seed=0).root
    shutil.copytree(a, tmp_path / "b")
    fingerprint = dataset(tmp_path, "cifar10", a).fingerprint()
    assert len(fingerprint) == 16
    assert dataset(tmp_path, "cifar10", tmp_path / "b").fingerprint() == fingerprint
    batch = tmp_path / "b" / "cifar-10-batches-py" / "data_batch_1"
    raw = bytearray(batch.read_bytes())
    raw[-10] ^= 1  # one pixel of one image, the file's size unchanged
    batch.write_bytes(bytes(raw))
    assert dataset(tmp_path, "cifar10", tmp_path / "b").fingerprint() != fingerprint


def test_imagenet_fingerprint_is_the_names_per_class(imagenet, tmp_path):
    def of(root: Path) -> str:
        return dataset(tmp_path, "imagenet", root, "dataset.num_classes=3").fingerprint()

    fingerprint = of(imagenet)
    shutil.copytree(imagenet, tmp_path / "copy")
    assert of(tmp_path / "copy") == fingerprint
    assert of(moved(imagenet, tmp_path / "moved")) != fingerprint
    extra = tmp_path / "copy" / "train" / WNIDS[2] / "extra.JPEG"
    shutil.copy(next((tmp_path / "copy" / "train" / WNIDS[2]).iterdir()), extra)
    assert of(tmp_path / "copy") != fingerprint


def test_imagenet_names_are_listed_once_until_a_class_folder_changes(imagenet, tmp_path, monkeypatch):
    """A job asks for the fingerprint up to three times; the class folders are listed the first time
    only, and a file renamed, added or removed in place is seen at the next ask."""
    from seal_exp.data import fingerprint as module

    root = tmp_path / "in-place"
    shutil.copytree(imagenet, root)
    listed: list[str] = []
    real_scandir = module.os.scandir

    def counting_scandir(path):
        if Path(path).parent.name in ("train", "val"):
            listed.append(Path(path).name)
        return real_scandir(path)

    monkeypatch.setattr(module.os, "scandir", counting_scandir)
    of = dataset(tmp_path, "imagenet", root, "dataset.num_classes=3").fingerprint
    first = of()
    assert len(listed) == 6  # 3 classes in train/ and in val/
    assert of() == of() == first and len(listed) == 6
    image = sorted((root / "train" / WNIDS[0]).iterdir())[0]
    image.rename(image.with_name("renamed.JPEG"))  # same class, another name
    renamed = of()
    assert renamed != first and len(listed) == 12
    module._names_cache.clear()
    assert of() == renamed  # what a fresh process computes


def test_embedded_fingerprints_are_their_shipped_files(tmp_path, monkeypatch):
    mnist = MNIST5k("mnist5k", 10, 1, 28).fingerprint()
    assert mnist == MNIST5k("mnist5k", 10, 1, 28, split_seed=3).fingerprint()
    assert mnist == MNIST5kDVS("mnist5k_dvs", str(tmp_path)).fingerprint()  # the same 5000 digits
    assert Digits("digits", 10, 1, 8).fingerprint() != mnist
    # another copy of the package's file with one byte changed is other data
    changed = tmp_path / "mnist_5k.csv.gz"
    raw = bytearray(MNIST5k("mnist5k", 10, 1, 28).data_file().read_bytes())
    raw[100] ^= 1
    changed.write_bytes(bytes(raw))
    monkeypatch.setattr(MNIST5k, "data_file", lambda self: changed)
    assert MNIST5k("mnist5k", 10, 1, 28).fingerprint() != mnist


def test_other_data_under_the_same_config_is_trained_not_reported(imagenet, tmp_path, capsys):
    """The same config on other data is another result: not skipped as finished, not resumed, and not
    distilled from a teacher cached for the old data."""
    a, b = imagenet, tmp_path / "b"
    shutil.copytree(a, b)  # the same data in another folder
    c = moved(a, tmp_path / "c")  # other data

    def run(root: Path, out: str, *extra: str) -> dict:
        return train(make_cfg(tmp_path, [*SMALL, f"dataset.root={root}", *extra], output=tmp_path / out))

    first = run(a, "ja")
    expected = dataset(tmp_path, "imagenet", a, "dataset.num_classes=3").fingerprint()
    assert first["data_fingerprint"] == expected
    assert json.loads((tmp_path / "ja" / "summary.json").read_text())["data_fingerprint"] == expected
    (tagged,) = tracked_runs(tmp_path, "distill")
    assert tagged.data.tags["seal.data"] == expected and tagged.info.status == "FINISHED"

    # the same files elsewhere: the same job, reported as finished
    again = run(b, "jb")
    assert again["skipped"] is True and again["reused_run"] == first["mlflow_run_id"]

    # other data: the teacher cached for the first data is refused, naming the file and what to do
    with pytest.raises(ConfigError, match=r"teacher trained on other data.*teacher\.cache_dir"):
        run(c, "jc")
    capsys.readouterr()
    other = run(c, "jc", f"teacher.cache_dir={tmp_path / 'teachers-c'}")
    out = capsys.readouterr().out
    assert "skipped" not in other
    assert f"MLflow run {first['mlflow_run_id']} finished this job" in out and "on other data" in out
    assert other["data_fingerprint"] not in (None, expected)
    assert len(tracked_runs(tmp_path, "distill")) == 2 and other["identity"] == first["identity"]
    # each data's result is found again for that data
    c_cfg = f"teacher.cache_dir={tmp_path / 'teachers-c'}"
    assert run(c, "jc2", c_cfg)["reused_run"] == other["mlflow_run_id"]
    assert run(b, "jb2")["reused_run"] == first["mlflow_run_id"]

    # the first data's last.pt is not continued on other data
    with pytest.raises(ConfigError, match=r"last.pt was trained on other data .*dataset.root="):
        run(c, "ja", c_cfg, "skip_finished=false")
    assert len(tracked_runs(tmp_path, "distill")) == 2
