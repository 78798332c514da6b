"""Finding and killing a Ray node's whole process tree from /proc, for tests that start their own nodes."""

from __future__ import annotations

import os
import signal


def proc_table() -> dict[int, tuple[int, int]]:
    """{pid: (ppid, session id)} of every process on the machine, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        table[int(entry)] = (int(fields[1]), int(fields[3]))
    return table


def process_tree(root: int) -> set[int]:
    """The processes of a node started as session leader `root`: its session (raylet, agents, workers) plus any
    descendant that left it."""
    table = proc_table()
    members = {pid for pid, (_, sid) in table.items() if sid == root}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = [root, *members]
    while stack:
        pid = stack.pop()
        if pid not in members:
            members.add(pid)
        stack.extend(c for c in children.get(pid, []) if c not in members)
    return members & set(table)


def kill_process_tree(root: int) -> None:
    """SIGKILL every process of `root`'s tree (see process_tree); the caller reaps `root` itself."""
    for pid in process_tree(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
