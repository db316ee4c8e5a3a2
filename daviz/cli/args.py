"""Argument types of the `daviz` command: each turns one word of the command line into a value, or refuses
it with a message that says what is accepted (argparse prints it as one line)."""
from __future__ import annotations

import argparse
import math

from .. import methods


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def seed_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def sigma_value(text: str) -> float:
    value = _float(text)
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"observation noise must be a positive finite number, got {text!r}")
    return value


def inflation_value(text: str) -> float:
    value = _float(text)
    if not (1 <= value < math.inf):
        raise argparse.ArgumentTypeError(f"inflation must be a finite number >= 1, got {text!r}")
    return value


def radius_value(text: str) -> float:
    return _float(text)  # 0, negative or inf: no localization; only NaN is meaningless


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"ensemble sizes must be integers >= 2, got {text!r}")
    return values


def float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(math.isnan(v) or v <= 0 for v in values):  # NaN compares False: test it apart
        raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
    return values


def sigma_list(text: str) -> list[float]:
    values = float_list(text)
    if any(math.isinf(v) for v in values):
        raise argparse.ArgumentTypeError(f"observation noise must be positive and finite, got {text!r}")
    return values


def settings_grid(text: str) -> dict:
    """'kernel=0.25,0.5;steps=20' -> {'kernel': (0.25, 0.5), 'steps': (20.0,)} (EnSF settings for `tune`)."""
    from ..filters.ensf import PARAM_NAMES

    grid = {}
    for item in (v.strip() for v in text.split(";")):
        if not item:
            continue
        name, _, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in PARAM_NAMES:
            raise argparse.ArgumentTypeError(f"unknown EnSF setting {name!r}; choose from {', '.join(PARAM_NAMES)}")
        try:
            grid[name] = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NAME=V1,V2 with numbers, got {item!r}") from None
        if not grid[name] or any(math.isnan(v) for v in grid[name]):
            raise argparse.ArgumentTypeError(f"expected NAME=V1,V2 with numbers, got {item!r}")
    if not grid:
        raise argparse.ArgumentTypeError(f"no settings in {text!r}")
    return grid


def filter_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    known = set(methods.METHODS)
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown filter(s) {bad}; choose from {sorted(known)}")
    return names
