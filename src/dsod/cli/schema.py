"""The CLI's schema: options, commands, value parsers and ``key=value`` parsing (Ultralytics style).

Every command declares its keys as ``Option``s (``dsod.cli.options``); values are parsed here before the
command runs, so a misspelt key or value fails at once with one line, the same way for every command.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from ..errors import DsodError


class CLIError(DsodError):
    """A user error: printed as one line, exit code 2."""


@dataclass
class Option:
    default: object
    help: str
    type: Callable = str
    choices: Optional[List[str]] = None


@dataclass
class Command:
    help: str
    run: Callable[[Dict[str, object]], int]
    options: Dict[str, Option] = field(default_factory=dict)
    doc: str = ""  # a module whose docstring `dsod COMMAND --help` prints after the keys


def boolean(v: str) -> bool:
    low = v.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_kv(cmd_name: str, cmd: Command, argv: List[str]) -> Dict[str, object]:
    values = {k: o.default for k, o in cmd.options.items()}
    for arg in argv:
        if "=" not in arg:
            raise CLIError(f"'{arg}' is not key=value; valid keys for 'dsod {cmd_name}': {', '.join(cmd.options)}")
        key, raw = arg.split("=", 1)
        key = key.lstrip("-").replace("-", "_")
        if key not in cmd.options:
            raise CLIError(f"unknown key '{key}' for 'dsod {cmd_name}'; valid: {', '.join(cmd.options)}")
        opt = cmd.options[key]
        if opt.choices is not None and raw not in opt.choices:
            raise CLIError(f"{key}={raw} is not valid; choose one of: {', '.join(opt.choices)}")
        try:
            values[key] = opt.type(raw)
        except ValueError as e:
            raise CLIError(f"{key}={raw} is not valid: {e}") from None
    return values


def model_names() -> List[str]:
    from ..config import PRESETS
    return list(PRESETS)


def positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise ValueError("must be a positive integer")
    return n




def float_range(lo: float, hi: float):
    def parse(v: str) -> float:
        x = float(v)
        if not lo <= x <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}")
        return x
    return parse


def nonneg_float(v: str) -> float:
    x = float(v)
    if x < 0:
        raise ValueError("must be >= 0")
    return x


def floats(v: str) -> tuple:
    return tuple(float(x) for x in v.strip("[]()").split(",") if x.strip())


def augment_value(v: str) -> str:
    from ..data import AUGMENT_MODES, augment_mode
    try:
        return augment_mode(v)
    except ValueError:
        raise ValueError(f"choose one of: {', '.join(AUGMENT_MODES)}") from None


def precise_bn_value(v: str):
    from ..engine.train_args import TrainingError, precise_bn_images
    try:
        precise_bn_images(v)
    except TrainingError:
        raise ValueError("use auto, false or a number of images") from None
    return v


def duration(v: str):
    from ..engine.budget import parse_duration
    parse_duration(v)  # a ValueError names the problem
    return v


def auto_bool(v: str):
    return None if v.strip().lower() in ("auto", "none", "") else boolean(v)


def optional(kind):
    def parse(v: str):
        return None if v.lower() in ("none", "null", "") else kind(v)
    return parse


