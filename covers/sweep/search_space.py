"""Hydra override strings → Optuna distributions, in the official hydra-optuna-sweeper's ``params:`` syntax.

``interval(a,b)`` float/int uniform, ``int(interval(a,b))``, ``tag(log, interval(a,b))`` log scale,
``range(a,b[,step])`` stepped (inclusive of ``b``, as in the official plugin), ``choice(...)`` or ``a,b,c``
categorical; a plain value is a fixed parameter."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import CompactHydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


class SearchSpaceError(CompactHydraException, ValueError):
    """A search-space entry that cannot become an Optuna distribution, or names no config key: Hydra prints the
    message alone (no traceback) and exits 1."""


def distribution_from_override(override: Override) -> BaseDistribution | str:
    """The Optuna distribution for one sweep override, or for a plain override its value as override text (quoted
    and escaped as Hydra's parser needs it: pass it on as ``key=text``, unchanged)."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        choices = list(override.sweep_iterator())
        if not all(c is None or isinstance(c, bool | int | float | str) for c in choices):
            raise SearchSpaceError(
                f"{override.input_line}: choices must be numbers, strings, booleans or null (for lists or mappings,"
                " make each a config group option and sweep over the group)"
            )
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if override.is_interval_sweep():
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise SearchSpaceError(f"{override.input_line} is not supported by the Optuna sweeper")


def parse_params(
    params: Mapping[str, Any] | Iterable[str],
) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Split ``{key: "interval(0,1)", ...}`` (or ``["key=..."]``) into distributions and fixed values; for a key
    given more than once the last entry counts.

    Raises :class:`SearchSpaceError` naming the offending parameter."""
    lines = [f"{k}={v}" for k, v in params.items()] if isinstance(params, Mapping) else list(params)
    parser = OverridesParser.create()
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for line in lines:
        key = line.split("=", 1)[0]
        try:
            (override,) = parser.parse_overrides([line])
            value = distribution_from_override(override)
        except SearchSpaceError:
            raise
        except Exception as e:  # Hydra's parser and Optuna's validators raise various types
            raise SearchSpaceError(f"search space for {key!r} is invalid ({line!r}): {e}") from e
        name = override.get_key_element()
        distributions.pop(name, None)  # the last word on a key wins, as on Hydra's command line: a value fixes
        fixed.pop(name, None)  # a ``params:`` search entry, a later sweep replaces an earlier fixed value
        if isinstance(value, BaseDistribution):
            distributions[name] = value
        else:
            fixed[name] = value
    return distributions, fixed


def grid_choices(distribution: BaseDistribution, name: str = "") -> list:
    """The values a grid search enumerates for a discrete distribution."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution) and not distribution.log:
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        n = round((distribution.high - distribution.low) / distribution.step)
        return [distribution.low + i * distribution.step for i in range(n + 1)]
    raise SearchSpaceError(f"grid sampling needs discrete values (choice or range) for {name!r}, got {distribution}")


def check_enqueued(configs: Iterable[Any], distributions: Mapping[str, BaseDistribution]) -> list[dict[str, Any]]:
    """``hydra.sweeper.enqueue``: each a mapping of searched keys to values inside their distributions (keys left
    out are sampled). Raises :class:`SearchSpaceError` naming the entry, the key and what is allowed."""
    checked = []
    for i, config in enumerate(configs):
        if not isinstance(config, Mapping) or not config:
            raise SearchSpaceError(f"hydra.sweeper.enqueue[{i}]: expected a mapping of searched keys to values")
        for key, value in config.items():
            if key not in distributions:
                searched = ", ".join(distributions) or "none"
                raise SearchSpaceError(f"hydra.sweeper.enqueue[{i}]: {key} is not searched (searched: {searched})")
            dist = distributions[key]
            if not contains(dist, value):
                raise SearchSpaceError(f"hydra.sweeper.enqueue[{i}]: {key}={value!r} is outside {describe(dist)}")
        checked.append(dict(config))
    return checked


def contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is one ``distribution`` can give: one of its choices, or a number within its bounds."""
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and distribution.low <= value <= distribution.high


def format_override(name: str, value: Any) -> str:
    """``name=value`` in Hydra override syntax: a string is always quoted (so ``'1'`` stays a string and ``'a b'``,
    ``'x:y'``, quotes and backslashes reach the job unchanged), ``None`` is ``null``, a mapping ``{k: v, ...}`` and
    a list ``[...]`` (for the values the sweeper hands each job, such as ``trial.pruner``)."""
    return f"{name}={override_value(value)}"


def override_value(value: Any) -> str:
    """A value in Hydra's override grammar (see :func:`format_override`)."""
    if isinstance(value, str):
        return quote(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(override_value(v) for v in value) + "]"
    return str(value)


def quote(text: str) -> str:
    """``text`` as a single-quoted Hydra string: quotes escaped, and so are the backslashes before a quote or at the
    end (Hydra reads other backslashes literally)."""
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def describe(distribution: BaseDistribution) -> str:
    """A distribution as a person reads it: ``log-uniform [0.0001, 0.03]``, ``int [0, 4]``, ``choice(4, 8)``."""
    if isinstance(distribution, CategoricalDistribution):
        return "choice(" + ", ".join(repr(c) if isinstance(c, str) else str(c) for c in distribution.choices) + ")"
    kind = "int " if isinstance(distribution, IntDistribution) else ""
    kind += "log-uniform" if distribution.log else ("uniform" if not kind else "")
    text = f"{kind.strip()} [{distribution.low:.4g}, {distribution.high:.4g}]"
    step = distribution.step
    return (
        text if step is None or (isinstance(distribution, IntDistribution) and step == 1) else f"{text} step {step:.4g}"
    )


def describe_space(distributions: Mapping[str, BaseDistribution]) -> str:
    """``optim.lr: log-uniform [0.0001, 0.03], freeze.n_frozen: int [0, 4]`` for log lines."""
    return ", ".join(f"{name}: {describe(d)}" for name, d in distributions.items())
