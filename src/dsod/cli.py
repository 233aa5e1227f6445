"""`dsod` command line: Ultralytics-style ``key=value`` arguments; parses and wires, nothing more.

    dsod info model=dsod300 num_classes=21
    dsod demo
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional


class CLIError(Exception):
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


def _bool(v: str) -> bool:
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


def _model_names() -> List[str]:
    from .config import PRESETS
    return list(PRESETS)


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise ValueError("must be a positive integer")
    return n


def cmd_info(args: Dict[str, object]) -> int:
    from .model import build_model
    from .model.summary import summarize

    overrides = {}
    if args["num_classes"] is not None:
        overrides["num_classes"] = args["num_classes"]
    if args["imgsz"] is not None:
        overrides["image_size"] = args["imgsz"]
    try:
        model = build_model(str(args["model"]), **overrides)
    except (ValueError, RuntimeError) as e:
        raise CLIError(f"cannot build model '{args['model']}': {e}") from None
    print(summarize(model).format())
    return 0


def cmd_demo(args: Dict[str, object]) -> int:
    from .model import build_model
    from .model.summary import summarize

    print("dsod demo: building DSOD300 (VOC, 21 classes) from random initialisation\n")
    print(summarize(build_model("dsod300")).format())
    return 0


def _commands() -> Dict[str, Command]:
    model_opt = Option("dsod300", "model preset", choices=_model_names())
    return {
        "info": Command(
            "print a model's trainable parameters, multiply-accumulates, sources and default boxes",
            cmd_info,
            {"model": model_opt,
             "num_classes": Option(None, "classes including background (21 VOC, 81 COCO)", _positive_int),
             "imgsz": Option(None, "input size (square)", _positive_int)}),
        "demo": Command("the README's main job on an embedded default", cmd_demo, {}),
    }


def _usage(commands: Dict[str, Command]) -> str:
    lines = ["usage: dsod COMMAND [key=value ...]   (dsod COMMAND --help for its keys)", "", "commands:"]
    lines += [f"  {name:<8} {c.help}" for name, c in commands.items()]
    return "\n".join(lines)


def _command_help(name: str, cmd: Command) -> str:
    lines = [f"usage: dsod {name} [key=value ...]", "", cmd.help, "", "keys:"]
    for k, o in cmd.options.items():
        choices = f" (one of: {', '.join(o.choices)})" if o.choices else ""
        lines.append(f"  {k}={o.default!s:<12} {o.help}{choices}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(commands))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"dsod: unknown command '{name}'; valid: {', '.join(commands)}", file=sys.stderr)
        return 2
    cmd = commands[name]
    if any(a in ("-h", "--help") for a in rest):
        print(_command_help(name, cmd))
        return 0
    try:
        return cmd.run(parse_kv(name, cmd, rest))
    except CLIError as e:
        print(f"dsod {name}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dsod {name}: interrupted", file=sys.stderr)
        return 130
