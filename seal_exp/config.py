"""Turning composed Hydra configs into objects, with errors that name the offending key.

Every configurable object is built through :func:`build`, before any data is read, so a bad value
stops the run while it is still cheap and says which key to change.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration the run refuses; the message names the key and what to do."""


class RunFailed(RuntimeError):
    """A run that started and failed for a reason its message gives in one line, with what to do (a loss
    that became non-finite, a tracking store that stopped working): ``python -m seal_exp.train`` prints
    that line, not a traceback, and exits 1; the run is FAILED in the store wherever the store allows."""


class InvalidArgument(ValueError):
    """Raised by a constructor for one of its own arguments; :func:`build` adds the config path."""

    def __init__(self, name: str, value: Any, rule: str) -> None:
        super().__init__(f"{name}={value!r}: {rule}")
        self.name, self.value, self.rule = name, value, rule


def require(condition: bool, name: str, value: Any, rule: str) -> None:
    """Raise :class:`InvalidArgument` unless ``condition`` holds."""
    if not condition:
        raise InvalidArgument(name, value, rule)


def require_finite(**values: Any) -> None:
    """Raise :class:`InvalidArgument` unless each value is a finite number: inf passes every ``> 0``
    check and surfaces mid-run, after the data was read, as a non-finite loss; a string fails the range
    check with a bare TypeError that names no key."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidArgument(name, value, "use a finite number")


_UNEXPECTED_KW = re.compile(r"unexpected keyword argument '([^']+)'")


def _accepted_keys(target: str) -> list[str]:
    try:
        fn = get_method(target)
        params = inspect.signature(fn).parameters
    except Exception:  # a target that cannot be imported is reported by instantiate itself
        return []
    return [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"]


def _origin(key: str) -> str:
    """Where a key's value came from, for error messages: the group file and any CLI override."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except Exception:
        return ""
    group = key.split(".")[0]
    parts = []
    choice = hc.runtime.choices.get(group) if hc.runtime.choices else None
    if choice:
        parts.append(f"conf/{group}/{choice}.yaml")
    overlays = [f"{g}={hc.runtime.choices[g]}" for g in ("experiment", "debug") if hc.runtime.choices.get(g)]
    if overlays:
        parts.append(f"overlays: {', '.join(overlays)}")
    overridden = [o for o in hc.overrides.task if o.lstrip("+~").split("=")[0] == key]
    if overridden:
        parts.append(f"command line: {overridden[-1]}")
    return f" [{'; '.join(parts)}]" if parts else ""


def invalid(key: str, value: Any, rule: str) -> ConfigError:
    """The one message shape for a refused value: key, value, rule, and where the value came from."""
    return ConfigError(f"{key}={value!r} is invalid: {rule}.{_origin(key)}")


FLOAT32_MAX = 3.4028234663852886e38  # a larger number overflows the float32 of a learning rate or a weight
INT64_MAX = 2**63 - 1  # a larger integer overflows torch's (and numpy's) integers


def check_numbers(node: DictConfig | ListConfig, prefix: str = "") -> None:
    """Refuse a NaN or infinite number anywhere in a config (``hydra`` aside), a number beyond float32
    or an integer beyond int64 (``optim.lr=1e300`` overflows at the first step), and text where a
    ``_target_`` takes a number or a switch (its default is a float, an int or a bool), naming the key.

    Third-party targets (torch's schedules, spikingjelly's surrogates) check nothing and fail only
    mid-run, so this one pass covers every float hyperparameter. Interpolations are skipped: they point
    at keys checked here.
    """
    if isinstance(node, ListConfig):
        items = [(f"{prefix}[{i}]", i) for i in range(len(node))]
    else:
        items = [(f"{prefix}.{k}" if prefix else str(k), k) for k in node if prefix or k != "hydra"]
    typed = _typed_parameters(node.get("_target_")) if isinstance(node, DictConfig) else {}
    for key, k in items:
        if OmegaConf.is_missing(node, k) or OmegaConf.is_interpolation(node, k):
            continue
        value = node[k]
        if isinstance(value, DictConfig | ListConfig):
            check_numbers(value, key)
        elif isinstance(value, float) and not math.isfinite(value):
            raise invalid(key, value, "use a finite number")
        elif isinstance(value, float) and abs(value) > FLOAT32_MAX:
            raise invalid(
                key, value, f"use a number of at most {FLOAT32_MAX:.4g} in size (float32's largest)"
            )
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
            raise invalid(key, value, "use an integer of at most 2**63 - 1 in size")
        elif typed.get(k) is float and isinstance(value, str):
            raise invalid(key, value, "use a number")
        elif typed.get(k) is int and isinstance(value, str | bool):
            raise invalid(key, value, "use an integer")
        elif typed.get(k) is bool and not isinstance(value, bool):
            raise invalid(key, value, "use true or false")


def _typed_parameters(target: Any) -> dict[str, type]:
    """The parameters of a ``_target_`` whose default is a float, an int or a bool, with that type (none
    when it cannot be imported): text where such a number or switch belongs is refused by key."""
    if not isinstance(target, str):
        return {}
    try:
        params = inspect.signature(get_method(target)).parameters
    except Exception:  # a target that cannot be imported is reported when it is built
        return {}
    return {n: type(p.default) for n, p in params.items() if type(p.default) in (float, int, bool)}


def build(node: DictConfig, key: str, *, probe_partial: bool = False, **kwargs: Any) -> Any:
    """Instantiate ``node`` (found at config path ``key``) and translate failures into ConfigError.

    Constructors validate their own arguments with :func:`require`; an unknown key shows up as an
    unexpected keyword argument. Both become one message naming ``key.<argument>``. A ``_partial_``
    node is called once when ``probe_partial`` is set, so its mistakes surface now, not mid-run.
    """
    try:
        obj = instantiate(node, **kwargs)
        if probe_partial and isinstance(obj, functools.partial):
            obj()
        return obj
    except (InstantiationException, InvalidArgument, TypeError, ConfigError) as exc:
        raise _translate(exc, node, key, kwargs) from exc


def _translate(exc: BaseException, node: DictConfig, key: str, given: dict[str, Any]) -> Exception:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, InvalidArgument | TypeError | ConfigError):
        cause = cause.__cause__
    if isinstance(cause, ConfigError):  # already names its key, file or folder (e.g. a missing dataset)
        return cause
    target = str(node.get("_target_", "?"))
    if isinstance(cause, InvalidArgument):
        return invalid(f"{key}.{cause.name}", cause.value, cause.rule)
    if isinstance(cause, TypeError):
        m = _UNEXPECTED_KW.search(str(cause))
        if m:
            full = f"{key}.{m.group(1)}"
            accepted = ", ".join(k for k in _accepted_keys(target) if k not in given)
            return ConfigError(
                f"{full} is not a known key for {target}{_origin(full)}. Accepted keys: {accepted}. "
                "Remove it or fix its spelling."
            )
    return ConfigError(f"{key}: could not build {target}: {exc}")


def flatten(cfg: DictConfig | ListConfig | dict | list, prefix: str = "") -> dict[str, str]:
    """Dotted key -> string value of a resolved config (lists stay one value), for MLflow params."""
    container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    out: dict[str, str] = {}
    if isinstance(container, dict):
        for k, v in container.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, name))
            else:
                out[name] = str(v)
    else:
        out[prefix] = str(container)
    return out


def project_root() -> str:
    """The checkout this package runs from, else the working directory.

    Runs, the teacher cache and the MLflow store live here, so ``make ui`` finds every run no matter
    which folder a job was started from.
    """
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").is_file() and (here / "conf").is_dir():
        return str(here)
    return os.getcwd()


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@functools.cache
def top_level_keys() -> frozenset[str]:
    """The keys a composed config may hold at its top: ``conf/train.yaml``'s own, its groups', Hydra's."""
    own = OmegaConf.load(CONF_DIR / "train.yaml")
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    return frozenset({*own.keys(), *groups, "hydra"} - {"defaults"})


def check_top_level_keys(cfg: DictConfig) -> None:
    """Refuse a top-level key nothing reads (``+foo=1``, ``++lr=0.1``): it would do nothing but change the
    job's identity, and is most often a setting meant for a group (``optim.lr``)."""
    unknown = sorted(set(cfg.keys()) - top_level_keys())
    if not unknown:
        return
    key = unknown[0]
    known = sorted(top_level_keys() - {"hydra"})
    inner = sorted(f"{g}.{key}" for g in known if isinstance(cfg.get(g), DictConfig) and key in cfg[g])
    advice = (
        f"did you mean {' or '.join(inner)}? Set that key instead."
        if inner
        else f"drop it, or put it under the group that reads it (+dataset.{key}=... for a custom dataset "
        f"class). The top-level keys are {', '.join(known)}."
    )
    raise ConfigError(
        f"{key}: seal-exp reads no top-level setting of that name, so it would only change the job's "
        f"identity; {advice}"
    )


OmegaConf.register_new_resolver("project_root", project_root, replace=True)

# Four hex digits drawn once per process: with the time to the second, two runs (or sweeps) started
# in the same second never share a folder.
_PROCESS_TAG = secrets.token_hex(2)
OmegaConf.register_new_resolver("process_tag", lambda: _PROCESS_TAG, replace=True)

# slurm_ddp: one task (one DDP rank) per GPU; a CPU-only job (gpus_per_node=0) runs one task unless
# tasks_per_node says how many (gloo ranks).
OmegaConf.register_new_resolver("one_task_per_gpu", lambda gpus: max(int(gpus), 1), replace=True)
