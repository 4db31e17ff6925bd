"""The fast-path switches: each one on versus off gives the same loss and gradients within what its
precision allows, and the benchmark command runs and writes its figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_cfg
from spikingjelly.activation_based import base

from seal_exp.bench import main as bench
from seal_exp.plan import prepare
from seal_exp.training.epoch import EpochTotals, LaggedReadout, train_step

# a small SeAl run on MNIST-shaped input: spiking CNN (two neurons) <- CNN teacher, T=2
SMALL = ["student.channels=[4,8]", "teacher.model.channels=[4,8]", "neuron.T=2", "trainer.device=cpu"]


def _step(
    tmp_path: Path, *overrides: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Loss terms and the student's gradients after one step on a fixed batch."""
    plan = prepare(make_cfg(tmp_path, [*SMALL, *overrides]), data=False)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (8,), generator=generator)
    plan.student.optimizer.param_groups[0]["lr"] = 0.0  # keep the weights: only the gradients are compared
    _, terms, loss = train_step(plan.student.distiller, plan.student.optimizer, x, y)
    grads = {n: p.grad.clone() for n, p in plan.student.model.named_parameters() if p.grad is not None}
    return loss.detach(), {k: v.detach() for k, v in terms.items()}, grads


def _assert_same(a: tuple, b: tuple, rtol: float, atol: float) -> None:
    (loss_a, terms_a, grads_a), (loss_b, terms_b, grads_b) = a, b
    torch.testing.assert_close(loss_b, loss_a, rtol=rtol, atol=atol)
    for name in terms_a:
        torch.testing.assert_close(terms_b[name], terms_a[name], rtol=rtol, atol=atol, msg=name)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        # relative to the tensor's largest entry: summation order moves every entry by about that much
        scale = grads_a[name].abs().max().clamp_min(1e-12)
        gap = ((grads_b[name] - grads_a[name]).abs().max() / scale).item()
        assert gap <= rtol, f"{name}: gradients differ by {gap:.2e} of their largest entry"


def test_channels_last_matches_nchw_in_float32(tmp_path: Path) -> None:
    nchw = _step(tmp_path, "trainer.channels_last=false")
    _assert_same(nchw, _step(tmp_path, "trainer.channels_last=true"), rtol=1e-5, atol=1e-6)


def test_compiled_neurons_match_eager_in_float32(tmp_path: Path) -> None:
    _assert_same(_step(tmp_path), _step(tmp_path, "trainer.compile=neurons"), rtol=1e-5, atol=1e-6)


def test_bf16_keeps_losses_membranes_and_thresholds_in_float32(tmp_path: Path) -> None:
    """bf16 autocast: convolutions in bf16, everything the methods define (losses, membrane, threshold
    comparison) in float32. Documented tolerance: losses within 5e-2 relative of float32; gradients
    point the same way (cosine similarity > 0.95; a spike whose membrane sits near the threshold can
    flip, so entries are not compared one by one)."""
    plan = prepare(make_cfg(tmp_path, [*SMALL, "trainer.precision=bf16"]), data=False)
    seen: list[torch.dtype] = []
    for module in plan.student.model.modules():
        if isinstance(module, base.MemoryModule):
            module.register_forward_hook(lambda m, i, out: seen.extend([m.v.dtype, out.dtype]))
    x = torch.randn(4, 1, 28, 28)
    logits, terms = plan.student.distiller(x, torch.arange(4))
    assert seen and set(seen) == {torch.float32}, seen
    assert logits.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
    conv_outputs: list[torch.dtype] = []
    conv = next(m for m in plan.student.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, out: conv_outputs.append(out.dtype))
    plan.student.distiller(x, torch.arange(4))
    assert conv_outputs == [torch.bfloat16]
    (loss, terms, grads), (loss16, terms16, grads16) = (
        _step(tmp_path),
        _step(tmp_path, "trainer.precision=bf16"),
    )
    torch.testing.assert_close(loss16, loss, rtol=5e-2, atol=1e-3)
    for name in terms:
        torch.testing.assert_close(terms16[name], terms[name], rtol=5e-2, atol=1e-3, msg=name)
    for name in grads:  # spikes near the threshold flip under bf16 inputs: compare directions
        cosine = torch.nn.functional.cosine_similarity(grads[name].flatten(), grads16[name].flatten(), dim=0)
        assert cosine > 0.95, f"{name}: cosine similarity {cosine:.3f} of bf16 and float32 gradients"


def test_bad_switch_values_are_refused_by_key(tmp_path: Path) -> None:
    from seal_exp.config import ConfigError

    with pytest.raises(ConfigError, match=r"precision.*fp32, bf16"):
        prepare(make_cfg(tmp_path, ["trainer.precision=fp16"]), data=False)
    with pytest.raises(ConfigError, match=r"compile.*none, neurons"):
        prepare(make_cfg(tmp_path, ["trainer.compile=yes"]), data=False)


def test_bench_step_prints_and_writes_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    argv = ["step", "--compare", "--batch", "2", "--repeats", "2", "--warmup", "1", "--json", str(out)]
    overrides = ["dataset=mnist5k", "student=spiking_cnn", "teacher=cnn", *SMALL[:3]]
    assert bench([*argv, "--profile", "3", *overrides]) == 0
    printed = capsys.readouterr().out
    assert "configured vs plain: training step" in printed
    assert "the 3 operators with the most self time" in printed
    figures = json.loads(out.read_text())
    assert set(figures["variants"]) == {"plain", "configured"}
    plain, configured = figures["variants"]["plain"], figures["variants"]["configured"]
    assert plain["stem_once"] is False and configured["stem_once"] is True
    for variant in (plain, configured):
        train = variant["train"]
        assert 0 < train["ms_min"] <= train["ms_median"] <= train["ms_max"]
        assert train["images_per_s"] == pytest.approx(2 / (train["ms_median"] / 1000))
        assert variant["spikingjelly_kernel"].startswith("lif=")
    assert figures["train_speedup"] == pytest.approx(
        plain["train"]["ms_median"] / configured["train"]["ms_median"]
    )
    assert plain["train_speedup_vs_plain"] == 1.0
    profile = figures["profile"]  # the configured step's costliest operators, costliest first
    assert len(profile) == 3
    assert all(isinstance(row["op"], str) and row["op"] and row["calls"] >= 1 for row in profile)
    assert [row["self_ms"] for row in profile] == sorted((row["self_ms"] for row in profile), reverse=True)
    assert all(0 < row["share"] <= 1 for row in profile) and sum(row["share"] for row in profile) <= 1 + 1e-9


def test_bench_each_switch_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--each``: the plain path plus one switch at a time (compilation left out here: it is slow)."""
    from seal_exp import bench as bench_module

    switches = {k: v for k, v in bench_module.SWITCHES.items() if k != "+compile"}
    out = tmp_path / "each.json"
    argv = ["step", "--each", "--batch", "2", "--repeats", "1", "--warmup", "1", "--json", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_module, "SWITCHES", switches)
        assert bench([*argv, "dataset=mnist5k", "student=spiking_cnn", "teacher=cnn", *SMALL[:3]]) == 0
    variants = json.loads(out.read_text())["variants"]
    expected = ["plain", "+stem once", "+channels_last", "+bf16", "+cached teacher", "configured"]
    assert list(variants) == expected
    assert variants["+bf16"]["precision"] == "bf16" and variants["+bf16"]["stem_once"] is False
    assert variants["+cached teacher"]["teacher_logits"] == "cached"
    assert variants["plain"]["teacher_logits"] == "per step" == variants["configured"]["teacher_logits"]
    assert variants["+channels_last"]["channels_last"] is True and variants["+stem once"]["stem_once"] is True
    assert "x plain" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_steps_never_wait_for_the_gpu(tmp_path: Path) -> None:
    """``torch.cuda.set_sync_debug_mode('error')`` over the steps of an epoch: the step, the device-side
    totals and the progress readout never synchronise (the epoch's totals are read once, after)."""
    plan = prepare(make_cfg(tmp_path, [*SMALL[:3], "trainer.device=cuda"]), data=False)
    device = torch.device("cuda")
    plan.student.distiller.to(device)
    batches = [
        (torch.randn(8, 1, 28, 28).pin_memory(), torch.randint(0, 10, (8,)).pin_memory()) for _ in range(6)
    ]
    for x, y in batches[:2]:  # warm-up: allocator, cuDNN algorithm choice, Triton kernels
        train_step(plan.student.distiller, plan.student.optimizer, x.to(device), y.to(device))
    totals, readout = EpochTotals.zeros(device), LaggedReadout(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, (x, y) in enumerate(batches):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits, terms, loss = train_step(plan.student.distiller, plan.student.optimizer, x, y)
            totals.add(terms, logits, y, loss, step)
            readout.read(totals.bad_step, loss)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert totals.seen == 48 and totals.bad_step.item() == -1


def test_bench_data_times_the_training_loader_per_worker_count(tmp_path: Path) -> None:
    out = tmp_path / "data.json"
    argv = ["data", "--workers", "0,1", "--batches", "2", "--batch", "16", "--json", str(out)]
    assert bench([*argv, "dataset=digits", f"paths.root={tmp_path}"]) == 0
    figures = json.loads(out.read_text())
    assert figures["samples"] > 0 and figures["batch"] == 16
    assert [entry["workers"] for entry in figures["loaders"]] == [0, 1]
    for entry in figures["loaders"]:
        assert entry["first_batch_s"] > 0 and 0 < entry["ms_min"] <= entry["ms_median"] <= entry["ms_max"]
        assert entry["images_per_s"] == pytest.approx(16 / (entry["ms_median"] / 1000))
    with pytest.raises(SystemExit, match="--workers"):
        bench(["data", "--workers", "two", "dataset=digits", f"paths.root={tmp_path}"])
