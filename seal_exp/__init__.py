"""seal-exp: knowledge distillation into spiking neural networks, configured with Hydra, tracked in MLflow."""

from seal_exp import config as _config  # noqa: F401  (registers the ${project_root:} resolver used by conf/)

__version__ = "0.1.0"
