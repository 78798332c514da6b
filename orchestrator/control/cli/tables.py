"""Tables whose rows are named by an id: the one thing users copy from a table, so never cut short."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

GAP = 3  # characters between columns: padding 1 on each side and the (blank) rule; no outer edge


def print_id_table(out: Console, headers: Sequence[str], id_header: str, rows: Sequence[Sequence[str | Text]],
                   droppable: Sequence[str] = (), title: str | None = None) -> None:
    """Print `rows` with the `id_header` column whole on every row (str cells may hold markup; Text is literal).

    Rich fits a wide table to the terminal by cutting cells with "…", ids included. Here, on a terminal too narrow
    for every column, the `droppable` columns go first (in that order, named in a note; `--json` has them all).
    What still does not fit is taken from headers and multi-word values (they wrap); single values (a state, a
    number, an id) keep their width. Only a terminal too narrow even for that folds the values too."""
    cells = {h: [_plain_text(row[i]) for row in rows] for i, h in enumerate(headers)}
    natural = {h: max([len(h), *(len(c) for c in cells[h])]) for h in headers}
    minimal = {h: max([1, *(len(word) for c in cells[h] for word in c.split())]) for h in headers}
    shown = list(headers)
    for header in droppable:
        if _table_width([natural[h] for h in shown]) <= out.width:
            break
        shown.remove(header)
    widths = _fit({h: natural[h] for h in shown}, minimal, id_header, out.width - GAP * (len(shown) - 1))
    # Fixed widths: rich then neither squeezes nor ellipsizes; what is wider than its column wraps or folds.
    columns = [Column(h, width=widths[h], overflow="fold") for h in shown]
    table = Table(*columns, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title)
    keep = [headers.index(h) for h in shown]
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    out.print(table)
    hidden = [h for h in droppable if h not in shown]
    if hidden:
        out.print(f"[dim]({', '.join(hidden)} hidden to fit {out.width} columns; --json shows every field)[/]")


def _fit(widths: dict[str, int], minimal: dict[str, int], id_header: str, room: int) -> dict[str, int]:
    """Narrow the widest columns a character at a time, first down to their longest word, then (the id last)
    below it, until the columns fit `room`."""
    widths = dict(widths)
    for floor in (minimal, {h: (minimal[h] if h == id_header else 1) for h in widths}, dict.fromkeys(widths, 1)):
        while sum(widths.values()) > room:
            slack = [h for h in widths if widths[h] > floor[h]]
            if not slack:
                break
            widths[max(slack, key=lambda h: widths[h] - floor[h])] -= 1
    return widths


def _plain_text(cell: str | Text) -> str:
    return cell.plain if isinstance(cell, Text) else Text.from_markup(cell).plain


def _table_width(column_widths: list[int]) -> int:
    return sum(column_widths) + GAP * (len(column_widths) - 1)
