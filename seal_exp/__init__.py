"""seal-exp: knowledge distillation into spiking neural networks, configured with Hydra, tracked in MLflow."""

from seal_exp import config as _config  # noqa: F401  (registers the ${project_root:} resolver used by conf/)

__version__ = "0.1.0"


def __getattr__(
    name: str,
):  # ``from seal_exp import load_student`` without importing torch for the CLI's sake
    if name == "load_student":
        from seal_exp.trained import load_student

        return load_student
    raise AttributeError(f"module 'seal_exp' has no attribute {name!r}")
