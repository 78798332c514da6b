"""Builds orchestrator/workloads/gpt/corpus/corpus.txt, the built-in training text, from standard-library docstrings.

Run once (`python -m orchestrator.workloads.gpt.make_corpus`) and commit the output: jobs must train offline,
and the corpus must not change under a resumed run. The output is a pure function of the Python version: a fixed, sorted
module list, members visited in sorted order, and repeated docstrings (inherited ones) kept once.
"""

import importlib
import inspect
from pathlib import Path
from types import ModuleType

CORPUS_PATH = Path(__file__).parent / "corpus" / "corpus.txt"

MODULES = sorted(
    """
    abc argparse ast asyncio.base_events asyncio.events asyncio.futures asyncio.locks asyncio.queues
    asyncio.streams asyncio.tasks base64 bisect builtins calendar codecs collections collections.abc
    concurrent.futures configparser contextlib copy csv dataclasses datetime decimal difflib doctest
    email.message email.utils enum fractions functools getopt gettext glob gzip hashlib heapq hmac html
    http.client http.server importlib inspect io ipaddress itertools json json.decoder json.encoder locale
    logging logging.handlers math mimetypes multiprocessing.pool numbers operator optparse os os.path pathlib
    pickle pprint queue random re sched secrets selectors shelve shlex shutil smtplib socket sqlite3
    statistics string struct subprocess tarfile tempfile textwrap threading time timeit tokenize traceback
    types typing unittest.case unittest.mock urllib.parse urllib.request uuid warnings weakref
    xml.etree.ElementTree zipfile zlib
    """.split()
)


def _documented(module: ModuleType) -> list[tuple[str, object]]:
    """The module, then its public classes (with their public methods) and functions, in sorted order."""
    out = [(module.__name__, module)]
    for name, obj in sorted(vars(module).items()):
        # Re-exported names are documented by the module that defines them.
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isroutine(obj):
            out.append((f"{module.__name__}.{name}", obj))
        elif inspect.isclass(obj):
            out.append((f"{module.__name__}.{name}", obj))
            out += [
                (f"{module.__name__}.{name}.{attr}", member)
                for attr, member in sorted(vars(obj).items())
                if not attr.startswith("_") and (inspect.isroutine(member) or isinstance(member, property))
            ]
    return out


def build() -> str:
    seen: set[str] = set()
    sections = []
    for module_name in MODULES:
        for qualname, obj in _documented(importlib.import_module(module_name)):
            doc = inspect.getdoc(obj)
            if doc and doc not in seen:
                seen.add(doc)
                sections.append(f"{qualname}\n\n{doc}\n")
    return "\n".join(sections)


if __name__ == "__main__":
    CORPUS_PATH.parent.mkdir(exist_ok=True)
    CORPUS_PATH.write_text(build(), encoding="utf-8")
    print(f"wrote {CORPUS_PATH.stat().st_size:,} bytes to {CORPUS_PATH}")
