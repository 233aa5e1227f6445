"""`dsod` command line: Ultralytics-style ``key=value`` arguments; parses and wires, nothing more.

    dsod train data=bccd.yaml model=dsod-tiny epochs=30 batch=16 device=cpu project=runs name=exp
    dsod val data=bccd.yaml model=runs/exp/weights/best.pt      (or detections=dets.json)
    dsod predict model=runs/exp/weights/best.pt source=img.jpg|folder|"glob/*.jpg" conf=0.25
    dsod info model=dsod300 num_classes=21
    dsod data check data=bccd.yaml
    dsod demo
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional

from ..errors import DsodError
from . import commands as cmds
from . import options as opts
from .schema import CLIError, Command, Option, parse_kv

__all__ = ["main", "CLIError", "Command", "Option", "parse_kv"]


def _commands() -> Dict[str, Command]:
    return {
        "train": Command("train a detector from scratch", cmds.cmd_train, opts.train_options()),
        "val": Command("evaluate a checkpoint or a detections file (VOC07, VOC area, COCO)", cmds.cmd_val,
                       opts.val_options()),
        "predict": Command("detect objects in images", cmds.cmd_predict, opts.predict_options()),
        "info": Command("print a model's trainable parameters, multiply-accumulates, sources and default boxes",
                        cmds.cmd_info, opts.info_options()),
        "data": Command("dataset tools: `dsod data check data=...`", cmds.cmd_data, opts.data_options()),
        "demo": Command("the README's main job: train on the embedded synthetic set, evaluate, predict",
                        cmds.cmd_demo, opts.demo_options()),
        "export": Command("export a checkpoint to ONNX (verified against eager; optional int8)", cmds.cmd_export,
                          opts.export_options(), doc="dsod.export"),
        "bench": Command("speed, MACs and memory against torchvision's SSD peers, in one run", cmds.cmd_bench,
                         opts.bench_options(), doc="dsod.bench"),
    }


def _usage(commands: Dict[str, Command]) -> str:
    lines = ["usage: dsod COMMAND [key=value ...]   (dsod COMMAND --help for its keys)", "", "commands:"]
    lines += [f"  {name:<8} {c.help}" for name, c in commands.items()]
    return "\n".join(lines)


def _command_help(name: str, cmd: Command) -> str:
    lines = [f"usage: dsod {name} [key=value ...]", "", cmd.help, "", "keys:"]
    for k, o in cmd.options.items():
        choices = f" (one of: {', '.join(o.choices)})" if o.choices else ""
        lines.append(f"  {k + '=' + str(o.default):<26} {o.help}{choices}")
    if cmd.doc:
        import importlib
        lines += ["", importlib.import_module(cmd.doc).__doc__ or ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    # Only as the `dsod` command (argv None) does main() touch process-wide settings; called from
    # Python (tests, notebooks) it leaves the caller's allocator and thread count alone.
    own_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(commands))
        return 0
    name, rest = argv[0], argv[1:]
    if name == "data" and rest and "=" not in rest[0] and not rest[0].startswith("-"):
        rest = [f"action={rest[0]}"] + rest[1:]
    if name not in commands:
        print(f"dsod: unknown command '{name}'; valid: {', '.join(commands)}", file=sys.stderr)
        return 2
    cmd = commands[name]
    if any(a in ("-h", "--help") for a in rest):
        print(_command_help(name, cmd))
        return 0
    try:
        keys = parse_kv(name, cmd, rest)
        if name in ("train", "demo") and own_process:  # the command's own settings (dsod.runtime.launch)
            from ..runtime.launch import configure_training_process
            code = configure_training_process(argv, keys, allow_ddp=name == "train")
            if code is not None:  # this process was the parent of CPU DDP workers
                return code
        return cmd.run(keys)
    except DsodError as e:  # every user-caused failure: one line, no traceback
        print(f"dsod {name}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # one line per run, not one per DDP worker
            print(f"dsod {name}: interrupted", file=sys.stderr)
        return 130
