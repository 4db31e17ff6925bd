"""What a config read from a file may build: only the classes the installed config groups name.

Run folders, checkpoints and sweeps are shared between people, so their configs (a ``best.pt``'s
architecture record, a run's ``config.yaml`` or ``.hydra/config.yaml``, a sweep's ``multirun.yaml``)
are untrusted input. Hydra's ``instantiate`` imports and calls whatever a ``_target_`` names, nested
nodes first, before the outer constructor can refuse anything; a ``_target_: torch.load`` with
``weights_only: false`` runs any pickle. So every node of such a config is checked here before anything
of it is built:

- a ``_target_`` must be one of the ``_target_`` strings found in the config search path's YAML files
  (``conf/**/*.yaml``), read once per process (:func:`allowed_targets`);
- an interpolation may call only resolvers that compute a value from the environment, the clock or the
  config itself (:data:`FILE_RESOLVERS`): not ``oc.create`` / ``oc.decode``, which turn text into nodes
  this check never saw, and not a resolver name built by interpolation; nor may its arguments spell a
  node with ``_target_`` (the grammar's ``{key: value}`` literals).

``_partial_``, ``_args_``, ``_recursive_`` and ``_convert_`` change how an allowed class is called, never
what is called: they pass, and the nodes under ``_args_`` are checked like any other (``_recursive_:
false`` exempts nothing). The package's own resolvers (``project_root``, ``process_tag``,
``one_task_per_gpu``) take no argument or an integer and return a path, a tag or an integer.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import GrammarParseError
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
from omegaconf.grammar_parser import parse

from seal_exp.config import CONF_DIR, ConfigError

TARGET = "_target_"
# the keys Hydra's instantiate reads from a node (hydra/_internal/instantiate/_instantiate2.py: _Keys)
INSTANTIATE_KEYS = frozenset({TARGET, "_args_", "_partial_", "_recursive_", "_convert_"})

# Resolvers a file's interpolations may call. OmegaConf's: environment variables, another key of the same
# config (oc.select, oc.dict.*, oc.deprecated). Hydra's: the clock, the running app's own Hydra config,
# the Python version. This package's: the checkout, the per-process tag, tasks per GPU.
FILE_RESOLVERS = frozenset(
    {
        "oc.env",
        "oc.select",
        "oc.dict.keys",
        "oc.dict.values",
        "oc.deprecated",
        "now",
        "hydra",
        "python_version",
        "project_root",
        "process_tag",
        "one_task_per_gpu",
    }
)

ADVICE = (
    "do not use this file (it was edited, or written by other software than seal-exp); a class of your own "
    "is built only when a config group file under conf/ names it, or when you list it in "
    "$SEAL_EXP_TRUSTED_TARGETS (comma-separated module.Class names)"
)


def _search_folder(entry: str | Path) -> Path:
    """A config search path entry as a folder: a path, ``file://<path>`` or ``pkg://<module>``."""
    text = str(entry)
    if text.startswith("pkg://"):
        return Path(str(importlib.resources.files(text[len("pkg://") :].strip("/").replace("/", "."))))
    return Path(text.removeprefix("file://")).expanduser().resolve()


@functools.cache
def targets_under(folder: Path) -> frozenset[str]:
    """Every ``_target_`` string in the YAML files under ``folder``, at any depth (lists included)."""
    found: set[str] = set()
    for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
        found.update(t for _, t in _targets(yaml.safe_load(path.read_text()), ""))
    return frozenset(found)


TRUST_VARIABLE = "SEAL_EXP_TRUSTED_TARGETS"


def trusted_by_user() -> frozenset[str]:
    """The classes the user trusts beyond the config groups' (``$SEAL_EXP_TRUSTED_TARGETS``, comma
    separated ``module.Class`` names): a class of one's own given on the command line
    (``+dataset._target_=mypkg.MyData``) is then built again from that run's files. The choice is the
    reader's, never the file's."""
    return frozenset(t.strip() for t in os.environ.get(TRUST_VARIABLE, "").split(",") if t.strip())


def allowed_targets(search_path: Sequence[str | Path] = (CONF_DIR,)) -> frozenset[str]:
    """The classes and functions a config read from a file may build: those the config groups of
    ``search_path`` (default: the package's ``conf/``) name, read once per folder and process, and those
    listed in ``$SEAL_EXP_TRUSTED_TARGETS``."""
    named = frozenset().union(*(targets_under(_search_folder(entry)) for entry in search_path))
    return named | trusted_by_user()


def _targets(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(key path of the node, its ``_target_`` value) for every node that has one."""
    if isinstance(node, dict):
        if TARGET in node:
            yield path, node[TARGET]
        for key, value in node.items():
            yield from _targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}[{i}]")


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """(key path, value) for every string value, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _plain(config: Any) -> Any:
    """A config as plain dicts and lists, its interpolations unresolved (resolving is what may run code)."""
    if isinstance(config, DictConfig | ListConfig):
        return OmegaConf.to_container(config, resolve=False)
    return config


def interpolation_problem(value: str) -> str | None:
    """Why an interpolation read from a file could build or run something unchecked, else None."""
    if "${" not in value:
        return None
    try:
        tree = parse(value)
    except GrammarParseError:
        return "it is not a valid interpolation"
    stack = [tree]
    while stack:
        ctx = stack.pop()
        if isinstance(ctx, OmegaConfGrammarParser.ResolverNameContext):
            if ctx.interpolation():
                return "its resolver's name is itself an interpolation"
            name = ctx.getText()
            if name not in FILE_RESOLVERS:
                allowed = ", ".join(sorted(FILE_RESOLVERS))
                return f"it calls the resolver {name!r}; a file may call only {allowed}"
        elif isinstance(ctx, OmegaConfGrammarParser.DictKeyContext) and ctx.getText().strip() in (
            INSTANTIATE_KEYS
        ):
            return f"it spells a node with {ctx.getText().strip()}, which would be built unchecked"
        stack.extend(ctx.getChildren() if hasattr(ctx, "getChildren") else [])
    return None


def refusal(config: Any, allowed: frozenset[str], prefix: str = "") -> tuple[str, str] | None:
    """The first thing in ``config`` (a DictConfig, ListConfig or plain dicts and lists) that a file may not
    build, as (its key path, what is wrong), else None. Nothing is resolved or imported."""
    plain = _plain(config)
    for path, target in _targets(plain, prefix):
        key = f"{path}.{TARGET}" if path else TARGET
        if not isinstance(target, str):
            return key, f"{key}={target!r} is not the name of a class"
        if target not in allowed:
            return key, f"{key}={target} is not a class that seal-exp's config groups name"
    for path, value in _strings(plain, prefix):
        problem = interpolation_problem(value)
        if problem:
            return path, f"{path}={value!r}: {problem}"
    return None


def check_file_config(
    config: Any,
    source: str | Path,
    prefix: str = "",
    search_path: Sequence[str | Path] = (CONF_DIR,),
    origin: Callable[[str], str] | None = None,
) -> None:
    """Refuse, in one line naming ``source`` and the key path, a config read from a file that would build
    anything but the classes the config groups of ``search_path`` name; call it before anything of the
    config is built, resolved or composed further. ``prefix``: where ``config`` sits in the file;
    ``origin``: where the refused key's value came from, given its path (e.g. an override)."""
    found = refusal(config, allowed_targets(search_path), prefix)
    if found:
        key, why = found
        came_from = origin(key) if origin else ""
        raise ConfigError(f"{source}: {why}{came_from}, so nothing of it is built: {ADVICE}")
