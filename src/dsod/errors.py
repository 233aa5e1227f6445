"""The one base class of every error a user can cause (bad keys, data, files, devices).

Each ``DsodError`` carries a one-line message that names the file or key and the fix; the ``dsod``
command catches ``DsodError`` once (``dsod.cli.main``) and prints that line with no traceback.
Subclasses keep the built-in class they extend where callers catch that (``ValueError``)."""
from __future__ import annotations


class DsodError(Exception):
    """A user-facing failure with a one-line message."""
