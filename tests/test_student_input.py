"""What a loaded student takes as input: normalised images, made from pixels in [0, 1] by the transform
``load_student`` hands back with the network (the statistics the run's data was normalised with); event
frames as they are."""

from __future__ import annotations

import json

import pytest
import torch

from seal_exp import load_student
from seal_exp.data.splits import stratified_split
from seal_exp.models import build_student
from seal_exp.plan import prepare
from seal_exp.run import checkpoint
from seal_exp.train import train
from seal_exp.trained import architecture
from tests.conftest import SMOKE, make_cfg


def test_pixels_through_the_input_transform_are_what_the_run_fed_its_network(tmp_path):
    cfg = make_cfg(tmp_path, [*SMOKE, "distiller=none", "tracking=none"])
    summary = train(cfg)
    assert summary["smoke"] is True  # three training batches, two test batches: the summary says so
    net = load_student(tmp_path / "out")
    plan = prepare(cfg)
    images, labels = plan.dataset.read()  # the digits as pixels in [0, 1], before any normalisation
    train_part, _, test_part = stratified_split(
        labels, cfg.dataset.val_fraction, cfg.dataset.test_fraction, cfg.dataset.split_seed
    )
    pixels = torch.tensor(images, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8]
    assert net.input_kind == "pixels"
    assert net.mean == pytest.approx((float(pixels[train_part].mean()),), rel=1e-6)  # the training part's
    assert net.std == pytest.approx((float(pixels[train_part].std()),), rel=1e-6)
    # every test image, transformed, is exactly a tensor the run's test loader gave the network
    data = plan.dataset.load()
    fed = {x.numpy().tobytes() for batch, _ in plan.loader(data, data.test, 64, shuffle=False) for x in batch}
    made = {x.numpy().tobytes() for x in net.input_transform(pixels[test_part])}
    assert len(made) == len(test_part) and made == fed
    assert not torch.allclose(net.input_transform(pixels[:4]), pixels[:4])  # not a no-op


def test_event_frames_have_no_input_transform_and_an_older_best_pt_says_it_does_not_know(tmp_path):
    cfg = make_cfg(tmp_path, ["dataset=mnist5k_dvs"])
    net = build_student(cfg)
    record = architecture(cfg, None)  # event data: no normalisation
    assert record["input"] == {"kind": "events"}
    checkpoint.atomic_save({"model": net.state_dict(), "architecture": record}, tmp_path / "events.pt")
    loaded = load_student(tmp_path / "events.pt")
    assert loaded.input_kind == "events" and loaded.input_transform is None
    assert loaded.mean is None and loaded.std is None

    older = {k: v for k, v in record.items() if k != "input"}  # written before the input was recorded
    checkpoint.atomic_save({"model": net.state_dict(), "architecture": older}, tmp_path / "older.pt")
    loaded = load_student(tmp_path / "older.pt")
    assert loaded.input_kind == "unknown" and loaded.input_transform is None
    assert json.dumps(record)  # plain values only: what weights_only loading accepts
