"""Data-parallel training on CPU with the gloo backend: sharding, global BatchNorm, and two processes
under torchrun following one process with the same global batch step by step."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, make_cfg, result_figures, run_cli
from spikingjelly.activation_based import layer
from torch import nn

from seal_exp.config import ConfigError
from seal_exp.data.loaders import make_loader
from seal_exp.models.spiking_network import batch_norm_repeated
from seal_exp.models.sync_batch_norm import SyncBatchNorm2d, convert_sync_batch_norm
from seal_exp.plan import prepare
from seal_exp.run import checkpoint
from seal_exp.train import torchrun_follower_overrides, train
from seal_exp.training.epoch import EpochTotals

# ---------------------------------------------------------------- sharding


@pytest.mark.parametrize("n, world", [(20, 2), (23, 3), (5, 4)])
def test_training_shards_together_are_the_single_process_batches(n: int, world: int) -> None:
    data = torch.utils.data.TensorDataset(torch.arange(n))
    single = make_loader(data, 2 * world, shuffle=True, seed=7)
    shards = [make_loader(data, 2, shuffle=True, seed=7, shard=(r, world)) for r in range(world)]
    for _ in range(3):  # three epochs: the generator advances alike
        whole = [b[0].tolist() for b in single]
        parts = [[b[0].tolist() for b in loader] for loader in shards]
        assert all(len(p) == len(parts[0]) for p in parts), "every rank takes the same number of steps"
        for step, batch in enumerate(whole):
            together = sorted(i for p in parts for i in p[step])
            padding = together[len(batch) :] if len(together) > len(batch) else []
            assert set(batch) <= set(together) and len(together) - len(batch) == len(padding)
        flat = [i for p in parts for b in p for i in b]
        assert set(flat) == set(range(n)) and len(flat) == -(-n // world) * world


def test_a_run_stopped_early_leaves_the_order_where_one_process_would() -> None:
    """With ``limit_train_batches`` an epoch ends before the sampler does; the next epoch's order must
    still be the single-process one."""
    data = torch.utils.data.TensorDataset(torch.arange(40))
    single = make_loader(data, 8, shuffle=True, seed=1)
    shards = [make_loader(data, 4, shuffle=True, seed=1, shard=(r, 2)) for r in range(2)]
    for _ in range(3):
        whole = [b[0].tolist() for b, _ in zip(single, range(2), strict=False)]
        parts = [[b[0].tolist() for b, _ in zip(loader, range(2), strict=False)] for loader in shards]
        for step, batch in enumerate(whole):
            assert sorted(parts[0][step] + parts[1][step]) == sorted(batch)


def test_evaluation_shards_count_every_sample_once() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(23))
    seen = [
        i for r in range(3) for b in make_loader(data, 4, shuffle=False, seed=0, shard=(r, 3)) for i in b[0]
    ]
    assert sorted(int(i) for i in seen) == list(range(23))


# ---------------------------------------------------------------- BatchNorm over the global batch


def _sync_bn_worker(rank: int, world: int, init: str, x: torch.Tensor, seeds: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    multi = layer.BatchNorm2d(3, step_mode="m").double()
    nn.init.uniform_(multi.weight, 0.5, 1.5)
    nn.init.uniform_(multi.bias, -0.5, 0.5)
    stem = nn.BatchNorm2d(3).double()
    synced = convert_sync_batch_norm(nn.Sequential(multi, stem))
    assert isinstance(synced[0], SyncBatchNorm2d) and synced[0].step_mode == "m"
    B = x.shape[1] // world
    mine = x[:, rank * B : (rank + 1) * B].clone().requires_grad_(True)  # [T, B/world, C, H, W]
    y = synced[0](mine)
    # the static stem: the image counted T times in the running variance's unbiasing factor
    image = mine[0].detach().clone().requires_grad_(True)
    z = batch_norm_repeated(synced[1], image, repeats=4)
    # the global objective: the mean over the whole batch; each rank holds its share of it
    loss = ((y * seeds[:, rank * B : (rank + 1) * B]).sum() + z.pow(3).sum()) / x.shape[1]
    loss.backward()
    for p in synced.parameters():
        dist.all_reduce(p.grad)  # what DDP does (then averages; here the loss is already the global mean)
    torch.save(
        {
            "y": y.detach(),
            "z": z.detach(),
            "x_grad": mine.grad,
            "image_grad": image.grad,
            "params": {k: v.grad for k, v in synced.named_parameters()},
            "state": synced.state_dict(),
        },
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_sync_batch_norm_is_batch_norm_on_the_global_batch(tmp_path: Path) -> None:
    """Two gloo processes, each with half the batch, against torch's BatchNorm on the whole batch."""
    torch.manual_seed(3)
    x = torch.randn(4, 6, 3, 5, 5, dtype=torch.float64) * 2 + 1  # [T, B, C, H, W]
    seeds = torch.randn_like(x)
    mp.spawn(
        _sync_bn_worker, args=(2, f"file://{tmp_path}/init", x, seeds, str(tmp_path)), nprocs=2, join=True
    )
    torch.manual_seed(0)
    multi = layer.BatchNorm2d(3, step_mode="m").double()
    nn.init.uniform_(multi.weight, 0.5, 1.5)
    nn.init.uniform_(multi.bias, -0.5, 0.5)
    stem = nn.BatchNorm2d(3).double()
    ref = nn.Sequential(multi, stem)
    whole = x.clone().requires_grad_(True)
    y = ref[0](whole)
    image = x[0].clone().requires_grad_(True)
    z = ref[1](image.repeat(4, 1, 1, 1))[: len(image)]  # BatchNorm over 4 copies: the repeated stem
    # the copies' outputs are equal; the stem's loss counts the first copy only, as the run does
    loss = ((y * seeds).sum() + z.pow(3).sum()) / x.shape[1]
    loss.backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks], 1), y.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.cat([r["z"] for r in ranks], 0), z.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks], 1), whole.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(
        torch.cat([r["image_grad"] for r in ranks], 0), image.grad, rtol=1e-9, atol=1e-9
    )
    for name, p in ref.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["params"][name], p.grad, rtol=1e-9, atol=1e-9)
    for key, value in ref.state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r["state"][key], value, rtol=1e-9, atol=1e-9)


def test_sync_batch_norm_alone_is_batch_norm() -> None:
    """Without a process group (one process) it is plain BatchNorm, in training and evaluation."""
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(4).double()
    synced = SyncBatchNorm2d(bn)
    x = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    for mode in (True, False):
        bn.train(mode), synced.train(mode)
        torch.testing.assert_close(synced(x), bn(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(synced.running_var, bn.running_var, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the launch


def test_batch_that_does_not_split_over_the_processes_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match=r"trainer.batch_size=64.*multiple of 3"):
        prepare(make_cfg(tmp_path, ["tracking=none"]))
    with pytest.raises(ConfigError, match=r"teacher.recipe.batch_size=16.*multiple of 3"):
        prepare(
            make_cfg(tmp_path, ["tracking=none", "trainer.batch_size=48", "teacher.recipe.batch_size=16"])
        )


def test_torchrun_followers_keep_hydra_files_out_of_the_run_folder() -> None:
    assert torchrun_follower_overrides([], {}) == []
    assert torchrun_follower_overrides([], {"RANK": "0", "WORLD_SIZE": "2"}) == []
    extra = torchrun_follower_overrides(["seed=1"], {"RANK": "1", "WORLD_SIZE": "2"})
    assert extra[1] == "hydra.output_subdir=null" and extra[0].startswith("hydra.run.dir=")
    assert "outputs" not in extra[0]
    with pytest.raises(SystemExit, match="multirun cannot run under torchrun"):
        torchrun_follower_overrides(["-m", "seed=0,1"], {"RANK": "0", "WORLD_SIZE": "2"})


@pytest.mark.slurm  # a sweep through the submitit launcher, as the other launcher sweeps: make test-slurm
def test_submitit_tasks_train_as_one_data_parallel_job(tmp_path: Path) -> None:
    """``tasks_per_node=2`` under the local submitit launcher: the ranks come from submitit's job
    environment, and the job is one two-process run writing one folder."""
    sweep = tmp_path / "sweep"
    done = run_cli(
        [
            "-m",
            "hydra/launcher=local",
            "hydra.launcher.tasks_per_node=2",
            "debug=smoke",
            "tracking=none",
            f"paths.root={tmp_path}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 1
    logs = (sweep / "0" / "train.log").read_text()
    assert "rank 0 of 2" in logs and "submitit" in logs


# ---------------------------------------------------------------- one teacher state on every rank

# Plain DDP (no trainer.sync_batchnorm): each rank's BatchNorm statistics follow its own shard of the
# batch. The teacher's logits are cached before the student trains, each rank computing them with its
# own copy of the teacher, so a copy that differs from the cached teacher trains a different student.
ONE_STATE = (
    "dataset=digits",
    "trainer.epochs=2",
    "trainer.batch_size=32",
    "trainer.eval_batch_size=64",
    "trainer.limit_train_batches=8",
    "trainer.cache_teacher_logits=true",
    "trainer.dist_timeout_min=2",  # a rank that fails ends the test within minutes, not half an hour
    "teacher.recipe.epochs=1",
    "teacher.recipe.batch_size=32",
    "teacher.recipe.limit_train_batches=45",
    "neuron.T=2",
    "student.channels=[8,16]",
)
# scancel while the student trains: SIGTERM to every rank during its third step (the teacher takes 45)
STOP_AT_STEP = 45 + 3


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _one_state_worker(rank: int, world: int, ports: list[int], roots: list[str]) -> None:
    """One rank of three launches of the same job: with its teacher trained, with it from the cache, and
    scancelled mid-way then relaunched (its teacher trained in the first launch, cached in the second)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)

    def launch(port: int, root: str, folder: str, *extra: str) -> None:
        os.environ["MASTER_PORT"] = str(port)
        train(make_cfg(Path(root), [*ONE_STATE, *extra], output=Path(root) / folder))

    launch(ports[0], roots[0], "trained")
    launch(ports[1], roots[0], "cached", "skip_finished=false")
    original, calls = EpochTotals.add, {"n": 0}

    def add(self: EpochTotals, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == STOP_AT_STEP:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    EpochTotals.add = add
    try:
        launch(ports[2], roots[1], "relaunched")
        raise AssertionError("the job ended before it was stopped")
    except SystemExit as exc:
        assert exc.code == 128 + signal.SIGTERM, exc.code
    finally:
        EpochTotals.add = original
    launch(ports[3], roots[1], "relaunched")


def _single_process_test_acc(root: Path) -> float:
    """The cached teacher's test accuracy, counted here by one process over the whole test split."""
    plan = prepare(make_cfg(root, [*ONE_STATE, "tracking=none"], output=root / "single"))
    data = plan.dataset.load()
    model = plan.teacher.model.eval()
    hits = 0
    with torch.no_grad():
        for x, y in plan.loader(data, data.test, 100, shuffle=False):
            hits += int((model(x).argmax(-1) == y).sum())
    return round(100.0 * hits / len(data.test), 4)


def test_a_data_parallel_job_has_one_teacher_whether_trained_cached_or_relaunched(tmp_path: Path) -> None:
    """Two gloo ranks without SyncBatchNorm: the teacher just trained, the same teacher from the cache and
    a job scancelled and relaunched give the same teacher accuracy (that of the cached file, evaluated by
    one process) and a bit-identical selected student; each summary agrees with its MLflow run."""
    import mlflow

    roots = [tmp_path / "trained_then_cached", tmp_path / "relaunched"]
    mp.spawn(_one_state_worker, args=(2, _free_ports(4), [str(r) for r in roots]), nprocs=2, join=True)
    folders = {
        "trained": roots[0] / "trained",
        "cached": roots[0] / "cached",
        "relaunched": roots[1] / "relaunched",
    }
    summaries = {k: json.loads((f / "summary.json").read_text()) for k, f in folders.items()}
    assert [s["world_size"] for s in summaries.values()] == [2, 2, 2]
    assert [s["teacher_origin"] for s in summaries.values()] == ["trained", "cache", "cache"]
    assert [s["teacher_logits"] for s in summaries.values()] == ["cached"] * 3
    teachers = [torch.load(next((r / ".cache" / "teachers").glob("*.pt")), weights_only=True) for r in roots]
    assert all(torch.equal(teachers[1]["state_dict"][k], v) for k, v in teachers[0]["state_dict"].items())
    golden = _single_process_test_acc(roots[0])
    assert {k: s["teacher_test_acc"] for k, s in summaries.items()} == dict.fromkeys(folders, golden)
    assert teachers[0]["test_acc"] == golden
    best = {k: checkpoint.load(f / "best.pt")["model"] for k, f in folders.items()}
    for k in ("cached", "relaunched"):
        differ = [n for n, v in best["trained"].items() if not torch.equal(best[k][n], v)]
        assert differ == [], f"{k}: best.pt differs from the trained run's in {differ}"
        assert result_figures(summaries[k]) == result_figures(summaries["trained"]), k
    for k, s in summaries.items():
        run = mlflow.MlflowClient(f"sqlite:///{folders[k].parent}/mlflow.db").get_run(s["mlflow_run_id"])
        assert run.data.metrics["teacher/test/acc"] == s["teacher_test_acc"], k


def _epochs(folder: Path) -> list[dict[str, str]]:
    with (folder / "epochs.csv").open() as f:
        return list(csv.DictReader(f))


def test_two_gloo_processes_follow_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    """torchrun --nproc_per_node=2 with SyncBatchNorm: the same losses, accuracies and weights as one
    process with the same global batch, one MLflow run, and nothing written by rank 1."""
    common = [
        "dataset=digits",  # 8x8 images: the comparison is of the split, not of the data
        "eval.after_training=false",  # measured once training ends, on rank 0 only: not what is compared
        "trainer.figures=false",  # drawn by rank 0 only, as is the logged model
        "tracking.log_model=false",
        "trainer.epochs=2",
        "trainer.batch_size=32",
        "trainer.eval_batch_size=100",
        "trainer.limit_train_batches=4",
        "trainer.sync_batchnorm=true",
        "trainer.progress=false",
        "teacher.recipe.epochs=1",
        "teacher.recipe.batch_size=64",
        "teacher.recipe.limit_train_batches=1",  # SGD at lr 0.1 amplifies float rounding step by step
        "neuron.T=2",
        "student.channels=[8,16]",
        # NCHW: one and two processes then agree to about 1e-6 (measured). In NHWC the CPU kernels
        # round a half batch differently, and this teacher's fp32 gradients are ill-conditioned
        # (about 1e-2 relative from float64 in either layout), so after one SGD step the two differ
        # by about 1e-3 relative: beyond this comparison's 1e-5, and nothing to do with the split.
        "trainer.channels_last=false",
        f"paths.root={tmp_path}",
    ]
    env = {"OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    done = run_cli(
        [*common, f"hydra.run.dir={one}", "teacher.cache_dir=" + str(tmp_path / "t1")], tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = run_cli(
        # the same job as the first (its identity is the same), so only skip_finished=false trains it
        [*common, f"hydra.run.dir={two}", "teacher.cache_dir=" + str(tmp_path / "t2"), "skip_finished=false"],
        tmp_path,
        env=env,
        launcher=torchrun,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (json.loads((f / "summary.json").read_text()) for f in (one, two))
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["teacher_test_acc"] == b["teacher_test_acc"]  # the teacher trained on 2 processes too
    ta, tb = (
        torch.load(next((tmp_path / t).glob("*.pt")), weights_only=True)["state_dict"] for t in ("t1", "t2")
    )
    for key, value in ta.items():
        torch.testing.assert_close(tb[key].double(), value.double(), rtol=1e-5, atol=1e-6, msg=key)
    for ea, eb in zip(_epochs(one), _epochs(two), strict=True):
        for key in ("train/loss", "train/ce", "train/ela", "train/sta"):
            assert float(eb[key]) == pytest.approx(float(ea[key]), rel=1e-5, abs=1e-7), key
        for key in ("train/acc", "val/acc", "test/acc"):
            assert float(eb[key]) == pytest.approx(float(ea[key]), abs=1e-9), key
    wa, wb = (torch.load(f / "last.pt", weights_only=True)["model"] for f in (one, two))
    for key, value in wa.items():
        torch.testing.assert_close(wb[key].double(), value.double(), rtol=1e-4, atol=1e-5, msg=key)
    last = torch.load(two / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and len(last["rng_ranks"]) == 2
    runs = (
        sorted(p.name for p in (tmp_path / "outputs").glob("*/*")) if (tmp_path / "outputs").exists() else []
    )
    assert runs == [], "rank 1 keeps Hydra's files out of the project's outputs/"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.data.tags.get("output_dir") for r in found) == sorted(
        str(f.resolve()) for f in (one, two)
    )
    assert all(r.info.status == "FINISHED" for r in found)

    # the pre-timeout signal reaching one rank only: both stop at the same step boundary, rank 0
    # writes last.pt, and the same command resumes to the uninterrupted run's weights, bit for bit
    three = tmp_path / "three"
    command = [
        *torchrun,
        "-m",
        "seal_exp.train",
        *common,
        f"hydra.run.dir={three}",
        "teacher.cache_dir=" + str(tmp_path / "t2"),
        "skip_finished=false",
        "trainer.checkpoint_every_steps=1",
    ]
    proc = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline, signalled = time.monotonic() + 240, False
    while time.monotonic() < deadline and proc.poll() is None and not signalled:
        try:
            step = checkpoint.load(three / "last.pt")["global_step"] if (three / "last.pt").is_file() else 0
        except Exception:  # replaced while we read it
            step = 0
        if step >= 2:
            os.kill(_rank_pid(proc.pid, 1), signal.SIGUSR2)
            signalled = True
        time.sleep(0.005)
    assert signalled, "the run ended before the signal could be sent"
    assert proc.wait(timeout=120) != 0
    stopped = checkpoint.load(three / "last.pt")
    assert 2 <= stopped["global_step"] < 8 and not stopped["finished"]
    assert not (three / "summary.json").exists()
    again = subprocess.run(
        command, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr + again.stdout
    wb, wc = (torch.load(f / "last.pt", weights_only=True)["model"] for f in (two, three))
    assert all(torch.equal(wb[k], wc[k]) for k in wb), f"stopped after step {stopped['global_step']}"
    for eb, ec in zip(_epochs(two), _epochs(three), strict=True):
        assert (eb["val/acc"], eb["test/acc"]) == (ec["val/acc"], ec["test/acc"])
        assert float(ec["train/loss"]) == pytest.approx(float(eb["train/loss"]), rel=1e-6)


def _rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of torchrun's worker with ``RANK=rank``."""
    for _ in range(100):
        children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
        for pid in children:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ:
                return int(pid)
        time.sleep(0.1)
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher_pid}")
