"""The baselines' own networks: the SAMD/NLD authors' ResNets, spikingjelly's zoo students and VGG-9.

Parameter counts are written from the papers' and codes' layouts (or, for the zoo students, taken
from the zoo's own constructor, built here directly); the behaviours are those the papers name: the ReLU
last block, the AvgPool shortcut, one affine head whose per-timestep mean is the authors' output, and
zoo students whose time-mean is exactly what the zoo network returns.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from spikingjelly.activation_based import neuron as sj_neuron
from torch import nn

from seal_exp.config import ConfigError
from seal_exp.models import build_student, build_teacher
from seal_exp.models.neurons import reset_spiking_state
from seal_exp.models.resnet import BasicBlock
from seal_exp.plan import prepare
from tests.conftest import make_cfg, parameter_count, shaped_cfg
from tests.test_networks import bn, conv, linear  # the layout counts of tests/test_networks.py

# ---- counts from the layouts --------------------------------------------------------------------------


def ckdsnn_resnet_count(cin: int, classes: int, stem: int, widths, blocks, hidden: int | None) -> int:
    """stem conv+BN; per block two conv3×3+BN, plus AvgPool → 1×1 conv → BN on a shape change; head."""
    n = conv(cin, stem, 3) + bn(stem)
    width = stem
    for i, (w, count_) in enumerate(zip(widths, blocks, strict=True)):
        for j in range(count_):
            n += 2 * bn(w) + conv(width, w, 3) + conv(w, w, 3)
            if (j == 0 and i > 0) or width != w:
                n += conv(width, w, 1) + bn(w)  # the AvgPool has no parameters
            width = w
    return n + (linear(width, classes) if hidden is None else linear(width, hidden) + linear(hidden, classes))


def test_resnet20_is_the_samd_nld_dvs_student(tmp_path):
    layout = (16, (16, 32, 64), (3, 3, 3), 256)
    for channels, published in ((2, 290_890), (3, 291_034)):
        assert ckdsnn_resnet_count(channels, 10, *layout) == published
        assert (
            parameter_count(build_student(shaped_cfg(tmp_path, "student=resnet20", channels=channels)))
            == published
        )


def test_the_authors_resnet19_student_and_teacher(tmp_path):
    layout = (128, (128, 256, 512), (3, 3, 2))
    assert ckdsnn_resnet_count(3, 100, *layout, hidden=None) == 12_615_396  # the published teacher count
    teacher = build_teacher(shaped_cfg(tmp_path, "teacher=ckdsnn_resnet19", classes=100))
    assert parameter_count(teacher) == 12_615_396
    assert isinstance(teacher.head, nn.Linear) and teacher.classifier.in_features == 512
    for classes, expected in ((100, 12_721_124), (10, 12_697_994)):
        assert ckdsnn_resnet_count(3, classes, *layout, hidden=256) == expected
        assert (
            parameter_count(build_student(shaped_cfg(tmp_path, "student=ckdsnn_resnet19", classes=classes)))
            == expected
        )


@pytest.mark.parametrize("option", ["resnet20", "ckdsnn_resnet19"])
def test_the_authors_block_shortcut_and_head(tmp_path, option):
    torch.manual_seed(0)
    student = build_student(shaped_cfg(tmp_path, f"student={option}", channels=2, size=16, T=3)).double()
    blocks = [m for m in student.modules() if isinstance(m, BasicBlock)]
    # every block but the very last ends in a neuron; the last in a ReLU
    assert all(isinstance(b.act2, sj_neuron.BaseNode) for b in blocks[:-1])
    assert isinstance(blocks[-1].act2, nn.ReLU)
    # shortcut on a shape change: AvgPool(stride) → 1×1 stride-1 conv → BN
    strided = [b for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    assert len(strided) == 2
    for b in strided:
        pool, conv1x1, norm = b.shortcut
        assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == pool.stride == 2
        assert conv1x1.kernel_size == (1, 1) and conv1x1.stride == (1, 1) and isinstance(norm, nn.BatchNorm2d)
    # the head: two linear layers, nothing between
    assert [type(m).__name__ for m in student.head] == ["Linear", "Linear"]

    x = torch.randn(4, 2, 16, 16, dtype=torch.float64)
    reset_spiking_state(student)
    logits, features = student.forward_with_features(x, ["layer3"])
    last = features["layer3"]
    assert last.min() >= 0 and ((last > 0) & (last != 1)).any()  # real-valued ReLU output, not spikes
    # the authors' head: GAP → mean over T → Linear → Linear; ours at every step, then the mean
    pooled = last.mean(dim=(3, 4))  # [T, B, C]
    published = student.head(pooled.mean(0))
    assert logits.shape == (3, 4, 10)
    assert torch.allclose(logits.mean(0), published, rtol=0, atol=1e-12)
    assert not torch.allclose(logits[0], logits[1])  # the timesteps differ


def test_samd_runs_with_the_authors_teacher_and_refuses_a_hidden_head(tmp_path):
    """The authors' teacher reads its pooled last stage with one Linear: SAMD's CAM needs exactly that."""
    cfg = make_cfg(
        tmp_path, ["student=resnet20", "teacher=ckdsnn_resnet19", "distiller=samd_nld", "neuron.T=2"]
    )
    plan = prepare(cfg)  # refuses a teacher without a GAP → Linear head (check_cam_head) before any data
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([0, 3])
    _, terms = plan.student.distiller(x, y)
    assert set(terms) == {"ce", "samd", "nld"} and all(torch.isfinite(v) for v in terms.values())
    with pytest.raises(ConfigError, match="teacher=ckdsnn_resnet19"):
        prepare(make_cfg(tmp_path, ["student=resnet20", "teacher=resnet19", "distiller=samd"]))


# ---- VGG-9 --------------------------------------------------------------------------------------------


def vgg9_count(cin: int, classes: int, size: int) -> int:
    widths = [64, 64, 128, 128, 256, 256, 256]
    n, c = 0, cin
    for w in widths:
        n += conv(c, w, 3) + bn(w)
        c = w
    flat = 256 * (size // 8) ** 2
    return n + linear(flat, 1024) + linear(1024, classes)


def test_vgg9_layer_list_and_count(tmp_path):
    for channels, size, classes in ((3, 32, 10), (3, 32, 100), (2, 48, 10), (2, 48, 11)):
        student = build_student(
            shaped_cfg(tmp_path, "student=vgg9", channels=channels, size=size, classes=classes)
        )
        assert parameter_count(student) == vgg9_count(channels, classes, size)
    assert vgg9_count(3, 10, 32) == 5_942_218 and vgg9_count(2, 10, 48) == 11_184_522
    convs = [m for m in student.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 64, 128, 128, 256, 256, 256]
    assert all(m.bias is None for m in convs)
    assert list(student.feature_stages) == ["block1", "block2", "block3"]
    assert sum(isinstance(m, sj_neuron.BaseNode) for m in student.modules()) == 7 + 1  # + the hidden layer


def test_vgg_layouts_are_checked_before_any_data_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"student\.layout"):
        prepare(make_cfg(tmp_path, ["student=vgg9", "dataset=mnist5k", "student.layout=[pool,64]"]))
    with pytest.raises(ConfigError, match=r"student\.hidden"):
        prepare(make_cfg(tmp_path, ["student=vgg9", "dataset=mnist5k", "student.hidden=0"]))


# ---- spikingjelly's zoo students ------------------------------------------------------------------------

# option: (zoo constructor, its arguments, parameters at 10 classes, 3 channels, 32×32)
ZOO = {
    "ms_resnet18": (
        "spikingjelly.activation_based.model.ms_resnet.ms_resnet18",
        {"stem_kernel_size": 3, "stem_stride": 1},
        11_178_186,
    ),
    "qkformer": (
        "spikingjelly.activation_based.model.qkformer.QKFormer",
        {"embed_dims": 384, "num_heads": (6, 6, 6), "depths": (1, 1, 2), "mlp_ratio": 4.0},
        6_790_378,
    ),
    "spike_driven_transformer": (
        "spikingjelly.activation_based.model.spike_driven_transformer.SpikeDrivenTransformer",
        {"embed_dims": 512, "num_heads": 8, "depths": 2, "mlp_ratio": 4.0, "pooling_stat": "0011"},
        10_234_378,
    ),
    "spikformer": (
        "spikingjelly.activation_based.model.spikformer.spikformer_cifar10",
        {},
        9_310_906,
    ),
}


@pytest.mark.parametrize("option", sorted(ZOO))
def test_zoo_students_have_the_zoo_networks_parameters(tmp_path, option):
    target, kwargs, expected = ZOO[option]
    zoo = instantiate({"_target_": target, **kwargs}, T=2, num_classes=10)
    assert parameter_count(zoo) == expected
    assert parameter_count(build_student(shaped_cfg(tmp_path, f"student={option}"))) == expected


@pytest.mark.parametrize("option", sorted(ZOO))
def test_zoo_students_time_mean_is_the_zoo_networks_output(tmp_path, option):
    """Our per-timestep logits [T, B, K]; their mean is what the zoo's own forward returns."""
    torch.manual_seed(0)
    student = (
        build_student(shaped_cfg(tmp_path, f"student={option}", channels=2, size=32, T=3)).double().eval()
    )
    x = torch.rand(3, 2, 2, 32, 32, dtype=torch.float64)  # event frames, time-major
    with torch.no_grad():
        reset_spiking_state(student)
        logits = student(x)
        stem = student.stem(x.flatten(0, 1)).unflatten(0, (3, 2))
        reset_spiking_state(student)
        zoo_out = student.net(stem)  # the zoo's forward, its stem now an identity
    assert logits.shape == (3, 2, 10)
    mean = zoo_out.mean(0) if zoo_out.dim() == 3 else zoo_out  # Spikformer's zoo returns [T, B, K] itself
    assert torch.allclose(logits.mean(0), mean, rtol=0, atol=1e-10)


@pytest.mark.parametrize("option", ["qkformer", "spike_driven_transformer", "spikformer"])
def test_transformer_attention_neurons_keep_the_zoo_threshold(tmp_path, option):
    student = build_student(shaped_cfg(tmp_path, f"student={option}", "neuron.v_threshold=1.0"))
    thresholds = {
        name: m.v_threshold for name, m in student.named_modules() if isinstance(m, sj_neuron.BaseNode)
    }
    attention = {n: v for n, v in thresholds.items() if n.endswith("attn_lif")}
    assert attention and set(attention.values()) == {0.5}
    assert set(v for n, v in thresholds.items() if n not in attention) == {1.0}
    kept = build_student(shaped_cfg(tmp_path, f"student={option}", "student.attention_v_threshold=null"))
    assert {m.v_threshold for m in kept.modules() if isinstance(m, sj_neuron.BaseNode)} == {1.0}
    with pytest.raises(ConfigError, match=r"student\.attention_v_threshold"):
        build_student(shaped_cfg(tmp_path, f"student={option}", "student.attention_v_threshold=0"))
    with pytest.raises(
        ConfigError, match=r"student\.attention_v_threshold=0\.5 is invalid: this network has no"
    ):
        build_student(shaped_cfg(tmp_path, "student=ms_resnet18", "+student.attention_v_threshold=0.5"))


@pytest.mark.parametrize("option", sorted(ZOO))
def test_zoo_students_follow_the_neuron_group(tmp_path, option):
    student = build_student(
        shaped_cfg(tmp_path, f"student={option}", "neuron.reset=soft", "neuron/surrogate=rect")
    )
    nodes = [m for m in student.modules() if isinstance(m, sj_neuron.BaseNode)]
    assert nodes and all(type(m).__name__ == "LIF" and m.v_reset is None for m in nodes)
    assert all(type(m.surrogate_function).__name__ == "Rect" for m in nodes)


def test_synchronised_batchnorm_says_which_layers_it_cannot_synchronise(tmp_path, caplog):
    """The transformers' token BatchNorm1d stay per-process under trainer.sync_batchnorm: said, not silent."""
    from seal_exp.models.sync_batch_norm import SyncBatchNorm2d, convert_sync_batch_norm

    student = convert_sync_batch_norm(build_student(shaped_cfg(tmp_path, "student=spikformer")))
    assert any(isinstance(m, SyncBatchNorm2d) for m in student.modules())
    assert "are not 2-d" in caplog.text and "keep each process's own statistics" in caplog.text
    caplog.clear()
    convert_sync_batch_norm(build_student(shaped_cfg(tmp_path, "student=resnet20")))
    assert "are not 2-d" not in caplog.text


@pytest.mark.parametrize("distiller", ["samd", "kdsnn"])
@pytest.mark.parametrize(
    "option", ["resnet20", "ckdsnn_resnet19", "vgg9", "ms_resnet18", "qkformer", "spike_driven_transformer",
               "spikformer"],
)  # fmt: skip
def test_feature_distillers_read_the_new_students_last_stage(tmp_path, option, distiller):
    """SAMD and KD-SNN take the last stage ([T, B, C, H, W]) of every new student, as of any other."""
    cfg = make_cfg(tmp_path, [f"student={option}", f"distiller={distiller}", "neuron.T=2"])
    plan = prepare(cfg)
    torch.manual_seed(0)
    x, y = torch.randn(3, 1, 28, 28), torch.tensor([0, 3, 7])
    logits, terms = plan.student.distiller(x, y)
    assert logits.shape == (2, 3, 10)
    term = "samd" if distiller == "samd" else "feat"
    assert term in terms and torch.isfinite(terms[term]) and terms[term] > 0
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in plan.student.model.parameters() if p.requires_grad)
