"""What reading a dataset found, said by every command that reads one (``dsod train``, ``dsod val``,
``dsod data check``) before it starts, in the same summarised lines (``SplitReport``: counts per
kind, the first files, the likely fix), and the verdict on whether there is enough left to train on.

A problem here means the data was skipped or changed (a box with an unknown class or outside its
image, an image that does not decode ...). Training refuses a split with no usable box, and one where
the problems that dropped annotations outnumber ``bad_data_limit`` of them (``bad_data_limit=1``
trains on whatever is left); evaluation says what it lost and goes on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence

from .records import DatasetError, ImageRecord, SplitReport

# Problems that change a box but keep it: not a loss of data.
KEPT_KINDS = ("box clipped to the image",)
# Default share of the annotations that may be lost to problems before training refuses.
BAD_DATA_LIMIT = 0.5


@dataclass
class SplitProblems:
    split: str
    images: int
    boxes: int  # usable boxes (crowd included)
    lost: int  # problems that dropped a box or an image
    lines: List[str] = field(default_factory=list)  # the summarised report, ready to print

    @property
    def lost_share(self) -> float:
        """The share of what was annotated that problems dropped (each problem counts one box or image)."""
        return self.lost / max(1, self.lost + self.boxes)


def split_problems(split: str, records: Sequence[ImageRecord], report: SplitReport) -> SplitProblems:
    boxes = sum(len(r.boxes) for r in records)
    lost = sum(n for kind, n in report.counts.items() if kind not in KEPT_KINDS)
    head = f"data [{split}]: {len(records)} images, {boxes} boxes, "
    if not report.n_problems:
        return SplitProblems(split, len(records), boxes, 0, [head + "no problems"])
    lines = [head + report.summary() + (f" ({lost} box(es)/image(s) dropped)" if lost else "")]
    lines += [f"  {p}" for p in report.problems]
    return SplitProblems(split, len(records), boxes, lost, lines)


def check_trainable(p: SplitProblems, data: str, limit: float = BAD_DATA_LIMIT) -> None:
    """Raise ``DatasetError`` (one line) when ``p`` leaves nothing, or too little, to train on."""
    first = f" First problem: {p.lines[1].strip()}" if len(p.lines) > 1 else ""
    if p.boxes == 0:
        raise DatasetError(f"data={data}: the {p.split} split has no usable box ({p.images} images; "
                           f"{p.lost} problem(s) dropped data): nothing to learn from.{first}")
    if limit < 1 and p.lost_share > limit:
        raise DatasetError(f"data={data}: problems dropped {p.lost} of {p.lost + p.boxes} annotations in the "
                           f"{p.split} split ({100 * p.lost_share:.0f}% > bad_data_limit={limit:g}); fix the data "
                           f"(`dsod data check`) or train on what is left with bad_data_limit=1.{first}")
