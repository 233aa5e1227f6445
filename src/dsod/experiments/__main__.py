"""``python -m dsod.experiments ablation|report [key=value ...]``: the CPU-scale experiments of
docs/RESULTS.md.

    python -m dsod.experiments ablation seeds=0,1            # every variant, 2 seeds (resumable)
    python -m dsod.experiments ablation variants=dsod,plain  # a subset
    python -m dsod.experiments report                        # CSV + Markdown + plots of what finished

Keys: out (default docs/results/ablation), variants, seeds, and every ``Budget`` field (data,
iterations, batch, lr, weight_decay, warmup, augment, flipud, bn_decay, ema, precise_bn, val_every,
threads). Several
copies may run at once (e.g. one per core): they share the queue through lock files.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Dict, List, Optional

from .ablation import VARIANTS, Budget, run_all, write_report

USAGE = __doc__


def _parse(argv: List[str]) -> Dict[str, str]:
    kv = {}
    for a in argv:
        if "=" not in a:
            raise ValueError(f"'{a}' is not key=value")
        k, v = a.split("=", 1)
        kv[k.strip().replace("-", "_")] = v
    return kv


def _value(default, key: str, text: str):
    """``text`` as the type of the Budget field's default (a misspelt boolean is an error, not True)."""
    from ..cli.schema import boolean

    try:
        return boolean(text) if isinstance(default, bool) else type(default)(text)
    except ValueError:
        raise ValueError(f"{key}={text} is not a valid {type(default).__name__}") from None


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in ("ablation", "report"):
        print(f"error: unknown experiment '{cmd}'; valid: ablation, report", file=sys.stderr)
        return 2
    try:
        kv = _parse(rest)
        out = Path(kv.pop("out", "docs/results/ablation"))
        if cmd == "report":
            if kv:
                raise ValueError(f"unknown key(s) for report: {', '.join(kv)}; valid: out")
            print(write_report(out))
            return 0
        variants = [v for v in kv.pop("variants", ",".join(VARIANTS)).split(",") if v]
        seeds = [int(s) for s in kv.pop("seeds", "0,1").split(",") if s]
        fields = {f.name: f for f in dataclasses.fields(Budget)}
        bad = sorted(set(kv) - set(fields))
        if bad:
            raise ValueError(f"unknown key(s) {', '.join(bad)}; valid: out, variants, seeds, {', '.join(fields)}")
        budget = Budget(**{k: _value(getattr(Budget(), k), k, v) for k, v in kv.items()})
        run_all(variants, seeds, budget, out)
        print(write_report(out))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
