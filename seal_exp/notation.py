"""Config keys as the papers write them: ``distiller.alpha`` → α, ``neuron.T`` → T. Run names in MLflow
and the axes of every figure use it, so a plot reads like the paper it is compared with."""

from __future__ import annotations

GREEK = {"alpha": "α", "beta": "β", "gamma": "γ", "tau": "τ", "lam": "λ", "lambda": "λ"}


def display_key(key: str) -> str:
    """``distiller.alpha`` → ``α``, ``distiller.alpha_s`` → ``α_s``, ``neuron.T`` → ``T``,
    ``optim.lr`` → ``lr``: the last part of a key, each word in the papers' letter where they use one."""
    last = key.lstrip("+~").rsplit(".", 1)[-1]
    return "_".join(GREEK.get(part, part) for part in last.split("_"))
