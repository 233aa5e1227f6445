"""The selection's sort key, shared by the NumPy path (``selection``) and the compiled one (``kernel``).

One uint64 per (anchor, class) pair: class | inverted float32 score bits | anchor, so that one ascending
sort gives Caffe's order: by class, then by score descending, equal scores with the lower anchor first
(``std::stable_sort``)."""

SAMPLE = 8192  # scores sampled to guess the threshold of a prefix of about m pairs
ANCHOR_BITS, CLASS_BITS = 20, 12
