"""Tables whose rows are named by an id: the one thing users copy from a table, so never cut short."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

GAP = 3  # characters between columns: padding 1 on each side and the (blank) rule; no outer edge
FOLDED_MIN = 6  # the narrowest a folded column still reads well


def print_id_table(out: Console, headers: Sequence[str], id_header: str, rows: Sequence[Sequence[str]],
                   droppable: Sequence[str] = (), title: str | None = None) -> None:
    """Print `rows` (cells may hold rich markup) with the `id_header` column whole on every row.

    Rich fits a wide table to the terminal by cutting cells with "…", ids included. Here, on a terminal too narrow
    for every column, the `droppable` columns go first (in that order, named in a note; `--json` has them all),
    then the remaining columns fold; the id column has a fixed width, which rich never shrinks while others can
    give, and folds only where the terminal is narrower than the id itself."""
    widths = {h: max([len(h), *(Text.from_markup(row[i]).cell_len for row in rows)]) for i, h in enumerate(headers)}
    shown = list(headers)
    for header in droppable:
        if _table_width([widths[h] for h in shown]) <= out.width:
            break
        shown.remove(header)
    # Pinning the id's width leaves the others what is left; below a few characters each they would vanish,
    # so on a terminal that narrow the id folds along with everything else.
    others = [min(widths[h], FOLDED_MIN) for h in shown if h != id_header]
    pin_id = _table_width([widths[id_header], *others]) <= out.width
    columns = [Column(h, width=widths[h] if pin_id and h == id_header else None, overflow="fold") for h in shown]
    table = Table(*columns, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title)
    keep = [headers.index(h) for h in shown]
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    out.print(table)
    hidden = [h for h in droppable if h not in shown]
    if hidden:
        out.print(f"[dim]({', '.join(hidden)} hidden to fit {out.width} columns; --json shows every field)[/]")


def _table_width(column_widths: list[int]) -> int:
    return sum(column_widths) + GAP * (len(column_widths) - 1)
