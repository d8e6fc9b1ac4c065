"""A request's decoding options from its query string: one parameter per ``DecodingOptions`` field, named
as the field (the long flag with ``_``: ``beam_size``, ``sample_method``), parsed as the command line
parses it and checked by ``DecodingOptions`` itself, so the bounds are the command line's."""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Iterable
from dataclasses import fields, replace
from typing import Any

from utils.decoding.options import (
    MAX_BEAM_SIZE,
    MAX_DIVERSITY_LAMBDA,
    MAX_GROUPS,
    MAX_LENGTH,
    MAX_SEED,
    TEMPERATURE_RANGE,
    DecodingOptions,
    LengthPenalty,
    SampleMethod,
)
from utils.support.text import printable, shortened

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_MAX_SHOWN = 80  # characters of a value quoted back in a message


class OptionError(ValueError):
    """A query parameter that is unknown, malformed, or out of ``DecodingOptions``' bounds."""


def _boolean(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"must be true or false, got {shortened(text, _MAX_SHOWN)!r}")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, got {shortened(text, _MAX_SHOWN)!r}") from None


def _optional_integer(text: str) -> int | None:
    return None if text.lower() in ("", "none") else _integer(text)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number, got {shortened(text, _MAX_SHOWN)!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {shortened(text, _MAX_SHOWN)!r}")
    return value


# Each field type's parser and its OpenAPI schema. A new DecodingOptions field of a new type fails
# ``parsers()`` (and so the service's tests) until it is added here.
_BY_TYPE: dict[object, tuple[Callable[[str], Any], dict[str, Any]]] = {
    bool: (_boolean, {"type": "boolean"}),
    int: (_integer, {"type": "integer"}),
    int | None: (_optional_integer, {"type": "integer"}),
    float: (_number, {"type": "number"}),
    LengthPenalty: (LengthPenalty.parse, {"type": "string", "example": "wu_0.5"}),
    SampleMethod: (SampleMethod.parse, {"type": "string", "example": "top5"}),
}


# The bounds DecodingOptions checks, for the OpenAPI description. What one option allows given another
# (group_size at most beam_size, nbest at most the captions the method gives) no schema can say: such a
# request is a 422 naming the rule.
_RANGES: dict[str, tuple[float, float]] = {
    "beam_size": (1, MAX_BEAM_SIZE), "nbest": (1, MAX_BEAM_SIZE), "group_size": (1, MAX_GROUPS),
    "max_length": (1, MAX_LENGTH), "temperature": TEMPERATURE_RANGE,
    "diversity_lambda": (-MAX_DIVERSITY_LAMBDA, MAX_DIVERSITY_LAMBDA), "seed": (0, MAX_SEED),
}
_PATTERNS = {"length_penalty": r"^(|none|(wu|avg)_[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)$",
             "sample_method": r"^(greedy|sample|top(\d+|\d*\.\d+))$"}


def parsers() -> dict[str, tuple[Callable[[str], Any], dict[str, Any]]]:
    """Each query parameter's parser and schema, by name."""
    hints = typing.get_type_hints(DecodingOptions)
    out = {}
    for f in fields(DecodingOptions):
        if hints[f.name] not in _BY_TYPE:
            raise TypeError(f"no query parameter parser for DecodingOptions.{f.name}: {hints[f.name]}")
        out[f.name] = _BY_TYPE[hints[f.name]]
    return out


def decoding_options(query: Iterable[tuple[str, str]], defaults: DecodingOptions) -> DecodingOptions:
    """``defaults`` with the query's values; OptionError (one line) for anything it cannot take."""
    known = parsers()
    given: dict[str, Any] = {}
    for name, text in query:
        if name not in known:
            raise OptionError(f"unknown option {shortened(name, _MAX_SHOWN)!r}; the options are {', '.join(known)}")
        if name in given:
            raise OptionError(f"{name} is given twice")
        try:
            given[name] = known[name][0](text.strip())
        except ValueError as exc:
            raise OptionError(f"{name}: {printable(str(exc))}") from None
    try:
        return replace(defaults, **given)
    except ValueError as exc:
        raise OptionError(printable(str(exc))) from None


def openapi_parameters(defaults: DecodingOptions) -> list[dict[str, Any]]:
    """The query parameters, for the OpenAPI description, with the server's own defaults."""
    out = []
    for name, (_, schema) in parsers().items():
        value = getattr(defaults, name)
        shown = value if isinstance(value, bool | int | float) else _shown(value)
        default = {} if value is None else {"default": shown}
        bounds: dict[str, Any] = {}
        if name in _RANGES:
            bounds = {"minimum": _RANGES[name][0], "maximum": _RANGES[name][1]}
        if name in _PATTERNS:
            bounds = {"pattern": _PATTERNS[name]}
        out.append({"name": name, "in": "query", "required": False, "schema": {**schema, **default, **bounds},
                    "description": f"as --{name.replace('_', '-')} (docs/decoding.md)"})
    return out


def _shown(value: object) -> str:
    """An option's value as its query parameter is written."""
    if isinstance(value, LengthPenalty):
        return f"{value.kind}_{value.alpha:g}" if value.kind else "none"
    return str(value)
