"""Recipes: the pruning options of a ``nettrim prune`` run as a file, read back with ``--recipe``.

A recipe is a JSON object (or YAML, when PyYAML is installed) whose keys are the options of
``nettrim prune`` (:data:`RECIPE_KEYS`, the flags' names without the dashes, ``-`` or ``_``):

    {"mode": "cascade", "sparsity": {"1": 0.9, "3": 0.5}, "ignore": ["5"], "program": "auto"}

``sparsity`` and ``epsilon`` may be one number or ``{layer: number}`` (without ``layers``, the
layers it names are the ones pruned). Every run writes the
recipe it used into its report (``"recipe"``), and ``--recipe`` takes that report as it is, so
``nettrim prune CHECKPOINT --data CALIB --out OUT2 --recipe OUT.report.json`` reruns a run with
the same options. A flag given on the command line wins over the recipe's value.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from .common import UsageError

__all__ = ["RECIPE_KEYS", "RECIPE_VERSION", "apply_recipe", "read_recipe", "recipe_of"]

RECIPE_VERSION = 1
#: Recipe key -> (the attribute of the parsed arguments, its flag).
RECIPE_KEYS = {
    "epsilon": ("epsilon", "--epsilon"), "sparsity": ("sparsity", "--sparsity"),
    "global": ("global_budget", "--global"), "min_per_unit": ("min_per_unit", "--min-per-unit"),
    "mode": ("mode", "--mode"), "solver": ("solver", "--solver"),
    "layers": ("layers", "--layers"), "ignore": ("ignore", "--ignore"),
    "samples": ("samples", "--samples"), "max_rows": ("max_rows", "--max-rows"),
    "seed": ("seed", "--seed"), "gamma": ("gamma", "--gamma"),
    "max_iter": ("max_iter", "--max-iter"), "reweight": ("reweight", "--reweight"),
    "refit": ("refit", "--no-refit"), "program": ("program", "--program"),
    "normalize": ("normalize", "--normalize"),
}
_CHOICES = {"mode": ("parallel", "cascade"), "solver": ("admm", "cvxpy"),
            "program": ("auto", "best", "relu")}


def read_recipe(path: str) -> dict:
    """The options in recipe file ``path`` (JSON; YAML when PyYAML imports), or in the
    ``recipe`` entry of a prune report. Raises :class:`UsageError` naming the file and key."""
    file = pathlib.Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--recipe {path}: cannot be read ({err})") from err
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise UsageError(f"--recipe {path}: YAML recipes need PyYAML (pip install pyyaml), "
                             "which is not installed; JSON recipes always work") from err
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UsageError(f"--recipe {path}: not valid YAML ({err})") from err
    else:
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise UsageError(f"--recipe {path}: not valid JSON ({err}); YAML recipes need a "
                             ".yaml or .yml name") from err
    if isinstance(doc, Mapping) and isinstance(doc.get("recipe"), Mapping):
        doc = doc["recipe"]   # a prune report: the recipe it recorded
    if not isinstance(doc, Mapping):
        raise UsageError(f"--recipe {path}: expected a mapping of options, got "
                         f"{type(doc).__name__}")
    recipe = {str(k).replace("-", "_").lstrip("_"): v for k, v in doc.items()
              if k != "nettrim_recipe"}
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise UsageError(f"--recipe {path}: unknown keys {unknown}; a recipe sets "
                         f"{sorted(RECIPE_KEYS)}")
    for key, value in recipe.items():
        _check(path, key, value)
    return recipe


def _check(path: str, key: str, value: Any) -> None:
    def bad(expected: str):
        return UsageError(f"--recipe {path}: {key!r} must be {expected}, got {value!r}")

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is None and key not in ("mode", "solver", "program", "global", "refit"):
        return
    if key in ("epsilon", "sparsity"):
        values = list(value.values()) if isinstance(value, Mapping) else [value]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and v >= 0 and (key == "epsilon" or v < 1) for v in values):
            raise bad("a number or {layer: number}" + (" in [0, 1)" if key == "sparsity"
                                                       else " >= 0"))
    elif key in _CHOICES and value not in _CHOICES[key]:
        raise bad(f"one of {list(_CHOICES[key])}")
    elif key in ("global", "refit") and not isinstance(value, bool):
        raise bad("true or false")
    elif key in ("layers", "ignore") and not (isinstance(value, Sequence)
                                              and not isinstance(value, str)):
        raise bad("a list of layer names")
    elif key in ("samples", "max_rows", "max_iter", "min_per_unit", "reweight", "seed") and \
            not (isinstance(value, int) and not isinstance(value, bool)):
        raise bad("an integer")
    elif key == "gamma" and not (number and value >= 1):
        raise bad("a number >= 1")
    elif key == "normalize" and not (isinstance(value, Sequence) and len(value) == 2):
        raise bad("[mean, std] (each a number or a list per channel)")


def _given(argv: Sequence[str], flag: str) -> bool:
    return any(token == flag or token.startswith(flag + "=") for token in argv)


def apply_recipe(args, recipe: Mapping[str, Any]) -> None:
    """Set ``args``'s options from ``recipe``, except those given on the command line."""
    argv = list(args.argv)
    if recipe.get("epsilon") is not None and recipe.get("sparsity") is not None:
        raise UsageError("--recipe: set epsilon or sparsity, not both")
    # the command line's target replaces the recipe's, whichever of the two it is
    skip = {"sparsity", "epsilon"} if _given(argv, "--epsilon") or _given(argv, "--sparsity") \
        else set()
    for key, value in recipe.items():
        dest, flag = RECIPE_KEYS[key]
        if key in skip or _given(argv, flag):
            continue
        if key in ("epsilon", "sparsity") and isinstance(value, Mapping):
            value = {str(k): float(v) for k, v in value.items()}
        elif key in ("layers", "ignore") and value is not None:
            value = [str(v) for v in value]
        elif key == "normalize" and value is not None:
            value = tuple(tuple(float(v) for v in (p if isinstance(p, Sequence) else [p]))
                          for p in value)
        setattr(args, dest, value)
    target = args.sparsity if args.sparsity is not None else args.epsilon
    if isinstance(target, Mapping) and args.layers is None:
        args.layers = [name for name in target if name not in set(args.ignore or ())]
    if isinstance(args.sparsity, Mapping) and args.global_budget:
        raise UsageError("--recipe: a global budget (global: true) takes one sparsity, not "
                         "{layer: sparsity}")


def recipe_of(args) -> dict:
    """The recipe of a run: every option in :data:`RECIPE_KEYS` as the run used it."""
    recipe: dict = {"nettrim_recipe": RECIPE_VERSION}
    for key, (dest, _) in RECIPE_KEYS.items():
        value = getattr(args, dest, None)
        recipe[key] = list(value) if isinstance(value, tuple) else value
    return recipe
