"""Text that came from storage or Ray, shown as text: no rich markup, no terminal escape sequences.

Names, messages and metrics in storage are written by whoever can write there; printed as they are, an
escape sequence could rewrite the terminal (clear it, set its title, fake output) and `[...]` would be
taken for rich markup. Control and format characters are shown as `\\xNN` instead.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from rich.text import Text


def safe_str(value: Any) -> str:
    text = str(value)
    return "".join(c if c == "\n" or not unicodedata.category(c).startswith("C") else ascii(c)[1:-1] for c in text)


def plain(value: Any) -> Text:
    """A table cell or line that rich prints literally."""
    return Text(safe_str(value))
