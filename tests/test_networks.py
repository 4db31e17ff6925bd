"""Every student and teacher option: shapes, gradients, state resets, stages, parameter counts, stem-once."""

from __future__ import annotations

import copy

import pytest
import torch
from spikingjelly.activation_based import base, neuron
from torch import nn

from seal_exp.config import ConfigError
from seal_exp.models import build_student, build_teacher
from seal_exp.models.__main__ import main as list_models
from seal_exp.models.__main__ import options
from seal_exp.models.neurons import kernel_in_use, reset_spiking_state
from seal_exp.models.spiking_network import SpikingNetwork
from seal_exp.models.timm_nets import TimeFolded
from seal_exp.plan import prepare
from seal_exp.teacher import cache as teachers
from seal_exp.train import train
from tests.conftest import make_cfg, parameter_count, shaped_cfg

STUDENTS = options("student")
TEACHERS = options("teacher")
T, B, C, K, SIZE = 2, 3, 2, 7, 32  # a DVS-like shape: 2 input channels, 7 classes, 32×32


def tiny(tmp_path, *overrides: str, classes: int = K, channels: int = C, size: int = SIZE):
    return shaped_cfg(tmp_path, *overrides, classes=classes, channels=channels, size=size, T=T)


def test_the_published_architectures_are_all_options():
    assert {
        "resnet18",
        "resnet19",
        "resnet20",
        "preact_resnet34",
        "vggsnn",
        "sew_resnet18",
        "sew_resnet34",
        "spiking_vgg11_bn",
        "timm",
        # the baselines' own networks
        "ckdsnn_resnet19",
        "ms_resnet18",
        "qkformer",
        "spike_driven_transformer",
        "spikformer",
        "vgg9",
    } <= set(STUDENTS)
    assert {"resnet18", "resnet19", "resnet34", "resnet50", "timm", "ckdsnn_resnet19"} <= set(TEACHERS)


@pytest.mark.parametrize("option", STUDENTS)
def test_every_student_is_multistep_time_major_and_resets(tmp_path, option):
    torch.manual_seed(0)
    student = build_student(tiny(tmp_path, f"student={option}"))
    x = torch.randn(B, C, SIZE, SIZE)

    out = student(x)
    assert out.shape == (T, B, K)
    out.square().mean().backward()
    missing = [n for n, p in student.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"

    nodes = [m for m in student.modules() if isinstance(m, neuron.BaseNode)]
    assert len(nodes) >= 2 and all(n.step_mode == "m" for n in nodes)
    assert len({id(n.surrogate_function) for n in nodes}) == len(nodes), "a surrogate is shared"

    stages = list(student.feature_stages)

    def run(inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(1)  # train mode (batch statistics); the same dropout masks every call
        return student.forward_with_features(inputs, stages)

    with torch.no_grad():
        reset_spiking_state(student)
        first, features = run(x)
        last = features[stages[-1]]
        assert not torch.equal(last[:, 0], last[:, 1])  # the last stage is alive at init
        stale_logits, stale = run(x)  # membranes still charged from the first batch
        reset_spiking_state(student)
        again, features_again = run(x)
        assert torch.equal(first, again) and torch.equal(last, features_again[stages[-1]])
        # (MS-ResNet's zero-initialised residual branches leave its last stage stateless at init)
        assert not (torch.equal(last, stale[stages[-1]]) and torch.equal(first, stale_logits))
        reset_spiking_state(student)
        torch.manual_seed(1)
        assert torch.equal(student(x), first)  # the hooks change nothing
        for name in stages:
            assert features[name].shape[:2] == (T, B), name
            if features[name].dim() == 5:  # what feature distillers size their projectors with
                assert student.stage_channels(name) == features[name].shape[2], name
        if option != "timm":
            assert last.dim() == 5

        reset_spiking_state(student)
        frames = torch.rand(T, B, C, SIZE, SIZE)
        assert student(frames).shape == (T, B, K)
        with pytest.raises(ValueError, match="frames"):
            student(torch.rand(T + 1, B, C, SIZE, SIZE))
        with pytest.raises(KeyError, match="its stages are"):
            student.forward_with_features(x, ["no_such_stage"])


@pytest.mark.parametrize("option", TEACHERS)
def test_every_teacher_is_an_ann_with_stages_and_a_final_linear(tmp_path, option):
    torch.manual_seed(0)
    teacher = build_teacher(tiny(tmp_path, f"teacher={option}"))
    x = torch.randn(B, C, SIZE, SIZE)
    out = teacher(x)
    assert out.shape == (B, K)
    out.square().mean().backward()
    assert all(p.grad is not None for p in teacher.parameters())
    assert not any(isinstance(m, base.MemoryModule) for m in teacher.modules())

    teacher.eval()
    with torch.no_grad():
        frames = torch.rand(T, B, C, SIZE, SIZE)
        assert torch.allclose(teacher(frames), teacher(frames.mean(0)))  # DVS teachers see the time-mean
        stages = list(teacher.feature_stages)
        logits, features = teacher.forward_with_features(x, stages)
        assert torch.equal(logits, teacher(x))
        last = features[stages[-1]]
        assert last.dim() == 4 and last.shape[0] == B
        for name in stages:
            if features[name].dim() == 4:
                assert teacher.stage_channels(name) == features[name].shape[1], name
        head = teacher.classifier
        assert isinstance(head, nn.Linear) and head.out_features == K
        seen: list[torch.Tensor] = []
        handle = head.register_forward_hook(lambda _m, _i, out: seen.append(out))
        assert torch.equal(teacher(x), seen[0])  # it is the layer that produces the logits
        handle.remove()
        if option != "resnet19":  # GAP → Linear heads: SAMD weighs the last stage's channels with its rows
            assert head.in_features == last.shape[1]


# ---- parameter counts, against counts written from the papers' and codes' layouts --------------


def conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def linear(i: int, o: int) -> int:
    return i * o + o


def cifar_resnet_count(cin, classes, stem, widths, blocks, strides, hidden=None):
    n = conv(cin, stem, 3) + bn(stem)
    width = stem
    for w, count, stride in zip(widths, blocks, strides, strict=True):
        for j in range(count):
            n += conv(width, w, 3) + bn(w) + conv(w, w, 3) + bn(w)
            if (stride if j == 0 else 1) != 1 or width != w:
                n += conv(width, w, 1) + bn(w)
            width = w
    return n + (linear(width, classes) if hidden is None else linear(width, hidden) + linear(hidden, classes))


def preact_count(cin, classes, blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512)):
    n = conv(cin, 64, 7, bias=True) + bn(64)
    width = 64
    for i, (count, w) in enumerate(zip(blocks, widths, strict=True)):
        for j in range(count):
            n += conv(width, w, 3, True) + bn(w) + conv(w, w, 3, True) + bn(w)
            if (j == 0 and i > 0) or width != w:
                n += conv(width, w, 1, True) + bn(w)
            width = w
    return n + linear(width, classes)


def test_resnet18_has_exactly_the_published_parameter_count(tmp_path):
    for classes, published in ((100, 11_220_132), (10, 11_173_962)):
        cfg = tiny(tmp_path, "student=resnet18", classes=classes, channels=3)
        layout = (64, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2))
        assert cifar_resnet_count(3, classes, *layout) == published
        assert parameter_count(build_student(cfg)) == published
        assert (
            parameter_count(build_teacher(tiny(tmp_path, "teacher=resnet18", classes=classes, channels=3)))
            == published
        )


def test_resnet19_and_preact_resnet34_counts(tmp_path):
    # resnet19 with 100 classes: 12,721,124 (the "≈12.70 M" figure is this network with 10 classes,
    # 12,697,994; the two differ by the 90 extra rows of the 256→K classifier, 90·257 = 23,130).
    for classes, expected in ((100, 12_721_124), (10, 12_697_994)):
        layout = (128, (128, 256, 512), (3, 3, 2), (1, 2, 2), 256)
        assert cifar_resnet_count(3, classes, *layout) == expected
        assert (
            parameter_count(build_student(tiny(tmp_path, "student=resnet19", classes=classes, channels=3)))
            == expected
        )
        assert (
            parameter_count(build_teacher(tiny(tmp_path, "teacher=resnet19", classes=classes, channels=3)))
            == expected
        )
    # preact_resnet34 with 1000 classes: 21,806,184 ≈ 21.81 M (torchvision's resnet34, 21,797,672,
    # plus the 8,512 conv biases of the pre-activation design).
    assert preact_count(3, 1000) == 21_806_184
    cfg = tiny(tmp_path, "student=preact_resnet34", classes=1000, channels=3, size=224)
    assert parameter_count(build_student(cfg)) == 21_806_184


def test_python_m_seal_exp_models_lists_every_network_with_its_count(tmp_path, capsys):
    assert list_models(["dataset.num_classes=100", "dataset.in_channels=3", "dataset.image_size=32"]) == 0
    table = capsys.readouterr().out
    assert "| student | resnet18 | SpikingResNet | 11,220,132 |" in table
    assert "| teacher | resnet18 | TorchvisionResNet | 11,220,132 |" in table
    for option in STUDENTS + TEACHERS:
        assert f"| {option} |" in table
    assert list_models(["dataset.no_such_key=1"]) == 2


def test_teacher_stem_follows_the_class_count(tmp_path):
    small = build_teacher(tiny(tmp_path, "teacher=resnet34", classes=100))
    assert small.net.conv1.kernel_size == (3, 3) and small.net.conv1.stride == (1, 1)
    assert isinstance(small.net.maxpool, nn.Identity) and small.net.conv1.in_channels == C
    large = build_teacher(tiny(tmp_path, "teacher=resnet34", classes=1000))
    assert large.net.conv1.kernel_size == (7, 7) and large.net.conv1.in_channels == C
    assert isinstance(large.net.maxpool, nn.MaxPool2d)


# ---- static-input stem once ---------------------------------------------------------------------


@pytest.mark.parametrize("option", [s for s in STUDENTS if s != "timm"])
def test_stem_once_agrees_with_the_stem_at_every_step(tmp_path, option):
    torch.manual_seed(0)
    size = 16  # the smallest every network takes: float64 at 32×32 costs seconds per network
    once = build_student(tiny(tmp_path, f"student={option}", "neuron.T=3", size=size)).double()
    assert isinstance(once, SpikingNetwork) and once.stem_once
    every = copy.deepcopy(once)
    every.stem_once = False
    x = torch.randn(B, C, size, size, dtype=torch.float64)
    if option == "spiking_vgg11_bn":  # dropout: the same masks for both paths
        torch.manual_seed(1)
    out_once = once(x)
    if option == "spiking_vgg11_bn":
        torch.manual_seed(1)
    out_every = every(x)
    assert torch.allclose(out_once, out_every, rtol=0, atol=1e-9)
    out_once.square().sum().backward()
    out_every.square().sum().backward()
    for (name, p1), p2 in zip(once.named_parameters(), every.parameters(), strict=True):
        assert torch.allclose(p1.grad, p2.grad, rtol=1e-7, atol=1e-9), name
    for (name, b1), b2 in zip(once.named_buffers(), every.buffers(), strict=True):
        # running statistics as if all T·B copies had been seen
        assert torch.allclose(b1.double(), b2.double(), rtol=1e-10, atol=1e-12), name


# ---- timm -------------------------------------------------------------------------------------------


def test_a_timm_vit_becomes_a_spiking_student(tmp_path):
    cfg = tiny(
        tmp_path,
        "student=timm",
        "student.model_name=vit_tiny_patch16_224",
        "+student.model_kwargs.img_size=32",
        "+student.model_kwargs.patch_size=8",
        "+student.model_kwargs.depth=2",
    )
    student = build_student(cfg)
    folded = [m for m in student.modules() if isinstance(m, TimeFolded)]
    assert len(folded) == 2  # one GELU per block becomes a neuron
    x = torch.randn(B, C, SIZE, SIZE)
    out = student(x)
    assert out.shape == (T, B, K)
    out.sum().backward()
    assert student.net.blocks[0].mlp.fc1.weight.grad is not None
    with torch.no_grad():
        reset_spiking_state(student)
        a = student(x)
        reset_spiking_state(student)
        assert torch.equal(a, student(x))
        _, feats = student.forward_with_features(x, ["blocks.1"])
    assert feats["blocks.1"].shape == (T, B, 17, 192)  # 16 patches + class token, time-major


def test_timm_student_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"student\.model_name"):
        build_student(tiny(tmp_path, "student=timm", "student.model_name=no_such_net"))
    with pytest.raises(ConfigError, match=r"student\.activations"):
        build_student(tiny(tmp_path, "student=timm", "student.activations=[torch.nn.Tanh]"))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_teacher_loads_local_weights_and_adapts_its_head(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / f"resnet18{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    cfg = tiny(
        tmp_path,
        "teacher=timm",
        "teacher.model.model_name=resnet18",
        f"teacher.model.weights={path}",
        channels=3,
    )
    teacher = build_teacher(cfg)
    assert torch.equal(teacher.net.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    assert teacher.classifier.out_features == K
    key = teachers.cache_key(cfg)
    torch.save({"state_dict": {"fc.bias": torch.zeros(1000)}}, path)  # other weights, same file name
    assert teachers.cache_key(cfg) != key  # the cache never serves a teacher grown from other weights
    with pytest.raises(ConfigError, match=r"teacher\.model\.weights"):
        build_teacher(tiny(tmp_path, "teacher=timm", f"teacher.model.weights={tmp_path / 'missing.pt'}"))


def test_the_run_records_the_kernel_of_each_neuron_type(tmp_path):
    cpu = torch.device("cpu")
    assert kernel_in_use(build_student(tiny(tmp_path)), cpu) == "lif=torch-reference"
    assert kernel_in_use(build_student(tiny(tmp_path, "neuron=plif")), cpu) == "plif=torch-reference"
    assert kernel_in_use(build_student(tiny(tmp_path, "neuron=if")), cpu) == "if=torch-reference"
    assert kernel_in_use(build_teacher(tiny(tmp_path)), cpu) == "none"


def test_plif_learns_one_decay_per_layer(tmp_path):
    student = build_student(tiny(tmp_path, "student=resnet20", "neuron=plif"))
    decays = [m.w for m in student.modules() if isinstance(m, neuron.ParametricLIFNode)]
    # stem + two per block, but the last block ends in a ReLU
    assert len(decays) == 1 + 2 * 9 - 1 and len({id(w) for w in decays}) == len(decays)
    params = {id(p) for p in student.parameters()}
    assert all(id(w) in params for w in decays)  # the optimiser sees every layer's decay


# ---- every option inside a whole run (train(cfg)), on a CPU, shrunk to one small batch -------------

TINY_RUN = (
    "debug=smoke",
    "tracking=none",
    "neuron.T=2",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=16",
    "trainer.limit_train_batches=1",
    "trainer.limit_eval_batches=1",
    "teacher.recipe.batch_size=8",
    "teacher.recipe.eval_batch_size=16",
    "teacher.recipe.limit_train_batches=1",
    "teacher.recipe.limit_eval_batches=1",
)


def _dataset_for(option: str) -> str:
    return "dataset=mnist5k" if option == "vggsnn" else "dataset=digits"  # VGGSNN needs >= 16×16 pixels


@pytest.mark.slow
@pytest.mark.parametrize("option", STUDENTS)
def test_every_student_trains_in_a_run(shared_root, tmp_path, option):
    summary = train(
        make_cfg(shared_root, [*TINY_RUN, _dataset_for(option), f"student={option}"], output=tmp_path)
    )
    assert len(summary["per_timestep_test_acc"]) == 2 and summary["teacher_origin"] in ("trained", "cache")


@pytest.mark.slow
@pytest.mark.parametrize("option", TEACHERS)
def test_every_teacher_trains_and_teaches_in_a_run(shared_root, tmp_path, option):
    summary = train(
        make_cfg(shared_root, [*TINY_RUN, "dataset=digits", f"teacher={option}"], output=tmp_path)
    )
    assert summary["teacher_checkpoint"].split("/")[-1].startswith(f"digits-{option}-")
    assert 0 <= summary["teacher_test_acc"] <= 100


def test_vggsnn_refuses_images_too_small_before_reading_data(tmp_path):
    with pytest.raises(ConfigError, match=r"student\.image_size"):
        prepare(make_cfg(tmp_path, ["student=vggsnn", "dataset=digits"]))


def test_pretrained_teacher_weights_can_be_used_untrained(tmp_path):
    """teacher.recipe.epochs=0: the (e.g. timm) weights are evaluated and cached as the teacher."""
    import timm

    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=1000).state_dict(), weights)
    timm_teacher = ["teacher=timm", "teacher.model.model_name=resnet18", f"teacher.model.weights={weights}"]
    cfg = make_cfg(tmp_path, [*TINY_RUN, "dataset=digits", *timm_teacher, "teacher.recipe.epochs=0"])
    plan = prepare(cfg)
    initial = {k: v.clone() for k, v in plan.teacher.model.state_dict().items()}
    summary = train(cfg)
    record = torch.load(summary["teacher_checkpoint"], weights_only=True)
    assert record["best_epoch"] == 0
    assert all(torch.equal(record["state_dict"][k], v) for k, v in initial.items())
    with pytest.raises(ConfigError, match=r"trainer\.epochs"):
        prepare(make_cfg(tmp_path, ["trainer.epochs=0"]))


def test_the_stem_once_benchmark_prints_its_figures(capsys):
    from seal_exp.bench import main as bench

    assert bench(["stem-once", "--batch", "2", "--repeats", "1", "--warmup", "0", "student=resnet20"]) == 0
    out = capsys.readouterr().out
    assert "stem once" in out and "stem every step" in out and "speed-up" in out
