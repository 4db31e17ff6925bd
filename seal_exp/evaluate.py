"""``python -m seal_exp.evaluate <run folder | MLflow run id | runs:/<id>> [eval.<key>=<value> ...]``

Measures a finished run's selected student (``best.pt``) beyond top-1, without training anything:
firing rates, synaptic operations and energy, accuracy at other timesteps T', robust accuracy under
FGSM / PGD (``conf/eval/default.yaml`` lists the settings). The result is added to ``evaluation.json``
in the run's folder, which keeps every earlier measurement that this one does not repeat (the energy, each
T', each attack, with its settings and sample count); its figures go to ``evaluation/``, and both are
logged into the same MLflow run, which stays FINISHED. Any finished run of a sweep can be measured this way.
A run id is looked up in $MLFLOW_TRACKING_URI, else in this project's store.

    python -m seal_exp.evaluate outputs/2026-12-06/10-00-00_1a2b eval.attack=pgd eval.timesteps=[1,2,3,4,6]
    python -m seal_exp.evaluate 3f78dde293b5421fa45b1f23aa4339be eval.attack=fgsm eval.epsilons=[0.01,0.03]
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from seal_exp.config import CONF_DIR, ConfigError, build
from seal_exp.config_targets import check_file_config
from seal_exp.measures import evaluation
from seal_exp.measures.settings import EvalSettings, check_applicable
from seal_exp.models import build_teacher
from seal_exp.run import checkpoint
from seal_exp.run.files import EVALUATION, read_summary
from seal_exp.run.session import RESOLVED_CONFIG
from seal_exp.teacher import cache as teacher_cache
from seal_exp.tracking import job_run_name, log_metrics_into
from seal_exp.trained import BEST, missing_sqlite_store, run_id_of, tracking_client

log = logging.getLogger("seal_exp")

USAGE = __doc__.split("\n\n", 1)[0]
SETTABLE = ("eval.", "trainer.device", "trainer.eval_batch_size", "trainer.num_workers")

FIGURES = "evaluation"


@dataclass
class FinishedRun:
    """A finished training run as found on disk (or fetched from its MLflow run)."""

    folder: Path  # where summary.json and best.pt are, and where evaluation.json goes
    cfg: DictConfig  # the run's config (resolved where it was fetched from MLflow)
    summary: dict[str, Any]
    run_id: str | None  # its MLflow run (None: trained with tracking=none)
    tracking_uri: str | None  # its store (None: not reachable from here, so nothing is logged)
    unlogged: str | None = None  # why a tracked run is not logged into, said before anything is measured


def parse_overrides(overrides: list[str]) -> DictConfig:
    """``eval.*`` (and where it runs: ``trainer.device``, ``eval_batch_size``, ``num_workers``) only: the
    student is measured as it was trained."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item!r}: give settings as key=value, e.g. eval.attack=pgd")
        if not key.startswith(SETTABLE):
            raise ConfigError(
                f"{key}: evaluate measures the run as it was trained, so only eval.* (and trainer.device, "
                "trainer.eval_batch_size, trainer.num_workers) can be set; train a new run to change the rest"
            )
    return OmegaConf.from_dotlist(overrides)


def _read_config(path: Path) -> DictConfig:
    """A run's config file, refused in one line when it is not a config or would build anything but the
    classes the config groups name (run folders are shared: nothing of it is built before this check)."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # invalid YAML, undecodable bytes, a list instead of a mapping …
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot read {path} as a config ({reason}): copy the run folder again") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} is not a mapping of settings: copy the run folder again")
    check_file_config(cfg, path)
    return cfg


def _run_config(folder: Path) -> DictConfig:
    """The run's resolved config as it wrote it, else Hydra's record with its folder as ``paths.output``."""
    if (folder / RESOLVED_CONFIG).is_file():
        return _read_config(folder / RESOLVED_CONFIG)
    path = folder / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"neither {folder / RESOLVED_CONFIG} nor {path} exists: no record of the run's config"
        )
    cfg = _read_config(path)
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output = str(folder)
    return cfg


def _finished_folder(folder: Path) -> tuple[dict[str, Any], DictConfig]:
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise ConfigError(
            f"no summary.json in {folder}: the run has not finished (resume it with the command that "
            "started it), or this is not a run folder"
        )
    summary = read_summary(summary_path)
    if summary.get("stage") != "distill":
        raise ConfigError(f"{folder} trained a teacher only: it has no student to evaluate")
    if not (folder / BEST).is_file():
        raise ConfigError(f"no {BEST} in {folder}: the run selected no model, nothing to evaluate")
    return summary, _run_config(folder)


def locate(target: str, tracking_uri: str | None = None) -> FinishedRun:
    """The run behind a folder, a ``best.pt``, an MLflow run id or ``runs:/<id>``; refused unless finished."""
    path = Path(target).expanduser()
    if path.is_file() and path.name == BEST:
        path = path.parent
    if path.is_dir():
        summary, cfg = _finished_folder(path)
        run_id = summary.get("mlflow_run_id")
        uri, unlogged = None, None
        if run_id and "uri" in cfg.get("tracking", {}):
            uri = tracking_uri or str(OmegaConf.select(cfg, "tracking.uri"))
            missing = missing_sqlite_store(uri)
            if missing is not None:  # the folder was copied here without its store: it is the record
                uri, unlogged = (
                    None,
                    (
                        f"MLflow run {run_id} is not logged into: no MLflow store at {missing}; set "
                        "MLFLOW_TRACKING_URI to the store it is in to log there"
                    ),
                )
        return FinishedRun(path.resolve(), cfg, summary, run_id, uri, unlogged)
    if not target.startswith(("runs:/", "models:/")) and ("/" in target or target.startswith(".")):
        raise ConfigError(f"{target}: no such run folder")
    run_id = run_id_of(target, tracking_uri)
    client = tracking_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise ConfigError(f"MLflow run {run_id}: not found in {client.tracking_uri} ({exc})") from None
    if run.info.status != "FINISHED":
        raise ConfigError(
            f"MLflow run {run_id} is {run.info.status}: only finished runs are evaluated (resume it with "
            "the command that started it)"
        )
    folder = Path(run.data.tags.get("output_dir", ""))
    if folder.is_dir() and (folder / "summary.json").is_file() and (folder / BEST).is_file():
        summary, cfg = _finished_folder(folder)
        return FinishedRun(folder.resolve(), cfg, summary, run_id, client.tracking_uri)
    # the run folder is on another machine: its tracked files are enough
    fetched = Path(tempfile.mkdtemp(prefix=f"seal-exp-evaluate-{run_id[:8]}-"))
    names = {a.path for a in client.list_artifacts(run_id)}
    missing = [n for n in ("summary.json", RESOLVED_CONFIG, BEST) if n not in names]
    if missing:
        raise ConfigError(
            f"MLflow run {run_id} lacks {', '.join(missing)} among its artifacts and its folder {folder} is "
            "not on this machine: evaluate it where the folder is"
        )
    for name in ("summary.json", RESOLVED_CONFIG, BEST):
        client.download_artifacts(run_id, name, str(fetched))
    summary = read_summary(fetched / "summary.json")
    if summary.get("stage") != "distill":
        raise ConfigError(f"MLflow run {run_id} trained a teacher only: it has no student to evaluate")
    return FinishedRun(fetched, _read_config(fetched / RESOLVED_CONFIG), summary, run_id, client.tracking_uri)


def _teacher(run: FinishedRun) -> torch.nn.Module | None:
    """The run's ANN teacher, for its MACs and energy (which its architecture fixes, not its weights):
    loaded from the checkpoint the run used when it is still there."""
    if not run.summary.get("teacher_checkpoint"):
        return None
    teacher = build_teacher(run.cfg)
    path = Path(str(run.summary["teacher_checkpoint"]))
    if path.is_file():  # checked against the run's config as the run itself checked it
        origin = "checkpoint" if run.cfg.teacher.get("checkpoint") else "cache"
        teacher_cache.load_into(
            teacher, teacher_cache.TeacherSource(path, origin, needs_training=False), run.cfg
        )
    else:
        log.info("the teacher checkpoint %s is gone: its costs are counted on its architecture", path)
    return teacher.eval()


def _earlier(path: Path) -> dict[str, Any] | None:
    """The run's evaluation.json, to be added to; refused in one line when it cannot be read."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read {path} ({exc}): move it away, and the next evaluation starts a new one"
        ) from None
    if not isinstance(record, dict) or record.get("format") not in (1, evaluation.FORMAT):
        raise ConfigError(
            f"{path} is not an evaluation record of format 1 or {evaluation.FORMAT} (another version wrote "
            "it?): move it away, and the next evaluation starts a new one"
        )
    return record


def _best(path: Path) -> dict[str, Any]:
    """``best.pt``, refused in one line when it is cut short or is not a student's checkpoint."""
    try:
        best = checkpoint.load(path)
    except Exception as exc:  # a truncated zip, an empty file, a pickle weights_only refuses …
        reason = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot read {path} ({reason}): the file is cut short or damaged; copy it again from where the "
            "run trained, or train the run again"
        ) from None
    if not isinstance(best, dict) or not isinstance(best.get("architecture"), dict):
        raise ConfigError(f"{path} records no architecture (written by an older version)")
    check_file_config(best["architecture"], path, prefix="architecture")  # shared files: built from below
    return best


def evaluate_run(target: str, overrides: list[str], tracking_uri: str | None = None) -> dict[str, Any]:
    """Measure a finished run's student; add what was measured to ``evaluation.json`` (+ figures) and log it
    into its MLflow run, which stays FINISHED. Everything is checked before any data is read."""
    started = time.perf_counter()
    given = parse_overrides(overrides)
    run = locate(target, tracking_uri)
    defaults = OmegaConf.load(CONF_DIR / "eval" / "default.yaml")
    cfg = OmegaConf.merge({"eval": defaults}, run.cfg, given)
    settings: EvalSettings = build(cfg.eval, "eval")
    check_applicable(cfg, settings)
    trainer = build(cfg.trainer, "trainer")
    device = trainer.resolve_device()
    best = _best(run.folder / BEST)
    out = run.folder / EVALUATION
    previous = _earlier(out)
    earlier, notes = evaluation.earlier_measurements(previous)
    if run.unlogged:
        print(f"seal-exp: {run.unlogged}", file=sys.stderr, flush=True)
    source = build(cfg.dataset, "dataset")
    log.info("loading %s", cfg.dataset.name)
    data = source.load()
    trained_on = run.summary.get("data_split_id")
    if trained_on is not None and trained_on != data.split_id:
        raise ConfigError(
            f"dataset={cfg.dataset.name} now splits into other test samples (split {data.split_id}) than "
            f"when the run trained (split {trained_on}): its dataset settings or files changed; evaluate "
            "where the run's data is as it was"
        )
    subject = evaluation.Subject(
        cfg,
        best,
        data,
        device,
        teacher=_teacher(run),
        batch_size=trainer.eval_batch_size,
        num_workers=trainer.num_workers,
        eval_limit=trainer.limit_eval_batches,
    )
    result = evaluation.measure(subject, settings)
    measurements = evaluation.accumulated(earlier, result)
    title = f"{cfg.dataset.name}, {job_run_name(run.cfg, 'distill')}"
    figures_dir = run.folder / FIGURES
    figures_dir.mkdir(exist_ok=True)
    drawn = evaluation.draw(
        result, figures_dir, title, run.summary.get("prefix_mean_test_acc"), measurements=measurements
    )
    asked = OmegaConf.to_container(cfg.eval, resolve=True)
    asked.pop("_target_", None)
    history = list((previous or {}).get("history") or [])  # one entry per evaluation, oldest first
    history.append(
        {
            "evaluated_at": result.evaluated_at,
            "wall_s": round(time.perf_counter() - started, 2),
            "measured": list(result.measurements()),
            "settings": asked,
        }
    )
    record = {
        "format": evaluation.FORMAT,
        "mlflow_run_id": run.run_id,
        "trained_T": result.trained_T,
        "test_samples": result.samples_test,
        "evaluated_at": result.evaluated_at,
        **evaluation.headline(measurements),
        "measurements": measurements,
        "history": history,
    }
    written = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # replaced whole: never half a record
    written.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(written, out)
    if run.run_id and run.tracking_uri:
        _log_into(run, result.metrics(), [out, *drawn])
    for line in [*notes, *result.lines(), evaluation.kept_line(measurements, result)]:
        if line:
            print(line, flush=True)
    if run.run_id and run.tracking_uri:
        where = f" | MLflow run {run.run_id} (still FINISHED)"
    elif run.run_id:
        where = f" | MLflow run {run.run_id}: not logged into (no store here)"
    else:
        where = ""
    print(f"{EVALUATION}: {out} | figures: {figures_dir}{where}", flush=True)
    return record


def _log_into(run: FinishedRun, metrics: dict[str, float], files: list[Path]) -> None:
    """Metrics and files into the finished run, leaving its status as it is."""
    client = tracking_client(run.tracking_uri)
    log_metrics_into(client, run.run_id, metrics, step=0)
    client.set_tag(run.run_id, "seal.evaluated", time.strftime("%Y-%m-%d %H:%M:%S"))
    for path in files:
        client.log_artifact(run.run_id, str(path), None if path.name == EVALUATION else FIGURES)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__.split("\n\n", 1)[1])
        return 0 if args else 2
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)  # this package's progress; other libraries' warnings only
    try:
        evaluate_run(args[0], args[1:], os.environ.get("MLFLOW_TRACKING_URI"))
    except ConfigError as exc:
        print(f"seal-exp: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
