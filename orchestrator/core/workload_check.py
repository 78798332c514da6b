"""What a spec names on the submitting machine, checked at submit: the code directory and the workload module.

Ray raises only when it launches the driver (a missing working_dir) or the workers import the workload (an
unknown module), long after the job was accepted. Both are checked here without running any of the user's
code: the module is located through import finders only (no package `__init__` runs, so neither does
whatever it imports, torch included).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

from orchestrator.core.errors import SpecError


def check_working_dir(working_dir: str | None) -> None:
    if working_dir is None:
        return
    path = Path(working_dir).expanduser()
    if not path.exists():
        raise SpecError(f"field 'working_dir': '{working_dir}' does not exist on this machine. Point it at the "
                        "directory that holds your code (it is shipped to the cluster from here).")
    if not path.is_dir():
        raise SpecError(f"field 'working_dir': '{working_dir}' is not a directory. Point it at the directory "
                        "that holds your code.")


def module_exists(dotted: str, working_dir: str | None) -> bool:
    """Whether `dotted` can be imported with working_dir first on the path, found without importing it."""
    parts = dotted.split(".")
    top = parts[0]
    spec = None
    if working_dir:
        spec = importlib.machinery.PathFinder.find_spec(top, [str(Path(working_dir).expanduser())])
    if spec is None:
        if top in sys.builtin_module_names:
            return len(parts) == 1
        try:
            spec = importlib.util.find_spec(top)  # a top-level name: no parent package to import
        except (ImportError, ValueError):
            return False
    for depth in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return False
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth + 1]),
                                                        list(spec.submodule_search_locations))
    return spec is not None


def check_workload_importable(workload: str, working_dir: str | None) -> None:
    """A `module:function` workload must name a module that exists (built-in names are not checked here)."""
    if ":" not in workload:
        return
    module = workload.split(":", 1)[0]
    if not module_exists(module, working_dir):
        where = f"in working_dir '{working_dir}' or" if working_dir else "(no working_dir given) in"
        raise SpecError(f"field 'workload': module '{module}' of '{workload}' cannot be found {where} the "
                        "installed packages. Check the spelling, or set working_dir to the directory that holds "
                        "your code.")


def check_submittable(workload: str, working_dir: str | None) -> None:
    check_working_dir(working_dir)
    check_workload_importable(workload, working_dir)
