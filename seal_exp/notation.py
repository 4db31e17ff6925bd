"""Config keys as the papers write them: ``distiller.alpha`` → α, ``neuron.T`` → T. Run names in MLflow
and the axes of every figure use it, so a plot reads like the paper it is compared with. Also the mark
(``[smoke]``) that names, titles and reports put on a run cut short for a quick check.
"""

from __future__ import annotations

from typing import Any

GREEK = {"alpha": "α", "beta": "β", "gamma": "γ", "tau": "τ", "lam": "λ", "lambda": "λ"}


def display_key(key: str) -> str:
    """``distiller.alpha`` → ``α``, ``distiller.alpha_s`` → ``α_s``, ``neuron.T`` → ``T``,
    ``optim.lr`` → ``lr``: the last part of a key, each word in the papers' letter where they use one."""
    last = key.lstrip("+~").rsplit(".", 1)[-1]
    return "_".join(GREEK.get(part, part) for part in last.split("_"))


SMOKE = "[smoke]"  # the mark of a run cut short, in its run name, its figures' titles and reports
LIMITS = ("limit_train_batches", "limit_eval_batches")


def is_smoke(cfg: Any) -> bool:
    """Whether a composed config's run is cut short (``debug=smoke``, or any ``limit_*_batches``): its
    numbers check that the pipeline runs (a few batches, a few test samples) and are no result.

    A distillation counts the student's limits (``trainer``), a teacher-only run its recipe's
    (``teacher.recipe``). Works on a plain dict of the config too (a job's ``.hydra/config.yaml``).
    """
    teacher_only = cfg.get("stage") == "teacher"
    node = (cfg.get("teacher") or {}).get("recipe") if teacher_only else cfg.get("trainer")
    return node is not None and any(node.get(k) is not None for k in LIMITS)
