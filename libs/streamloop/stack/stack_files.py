"""What a stack keeps in its data directory, and which of it a fresh start may remove.

A data directory may be the user's own (``--data-dir .`` in an ML project, which has its own
``artifacts/`` and ``logs/``). So a stack writes a marker, ``.streamloop-stack``, the first time it
uses a directory, naming the entries of ``FRESH_ENTRIES`` that were there before it: those are
someone else's, and a fresh start refuses rather than remove them. The marker is rewritten at
every start, and an entry named there that is gone since is the stack's from then on.

A directory a stack used before the marker existed is told by what a stack leaves there:
``stack.lock`` (every launcher takes it), ``stack.json`` or the broker's own log in ``broker/``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from streamloop.stack.data_dir_lock import LOCK_FILE
from streamloop.stack.exceptions import StackError

STATE_FILE = "stack.json"
MARKER = ".streamloop-stack"

# What a stack writes in its data directory and a fresh start removes. The signing key stays (a
# new one would sign nothing more safely), and so does anything else there: the directory may be
# the user's own, holding their pipeline.
FRESH_ENTRIES = ("broker", "redis", "artifacts", "logs", "collector", STATE_FILE, f"{STATE_FILE}.partial")
# Left by every stack before the marker: stack.lock is never removed, the broker logs at each start.
_EARLIER_STACK_SIGNS = (LOCK_FILE, STATE_FILE, "broker/noida.log", "broker/tansu.log")


def foreign_entries(data_dir: Path) -> list[str]:
    """The entries of ``FRESH_ENTRIES`` in ``data_dir`` that no stack made; read before the
    launcher takes the directory's lock, which creates ``stack.lock``."""
    present = [name for name in FRESH_ENTRIES if _exists(data_dir / name)]
    try:
        named = json.loads((data_dir / MARKER).read_text())["foreign"]
    except FileNotFoundError:
        if any(_exists(data_dir / sign) for sign in _EARLIER_STACK_SIGNS):
            return []
        return present
    except (OSError, ValueError, KeyError, TypeError):
        # A marker no stack wrote whole: keep what is there, as with no sign of a stack at all.
        return present
    return [name for name in present if name in named]


def mark(data_dir: Path, foreign: list[str]) -> None:
    """Write the marker: the directory is a stack's, except for ``foreign``."""
    text = json.dumps({"written_by": "streamloop: a stack uses this directory; a fresh start removes "
                                     f"{', '.join(FRESH_ENTRIES)} unless named in foreign",
                       "foreign": foreign}, indent=2)
    partial = data_dir / f"{MARKER}.partial"
    partial.write_text(text + "\n")
    partial.replace(data_dir / MARKER)


def refuse_foreign(data_dir: Path, foreign: list[str]) -> None:
    """A fresh start over entries the stack did not make: one line, nothing removed."""
    if foreign:
        names = ", ".join(f"{name}/" if (data_dir / name).is_dir() else name for name in foreign)
        raise StackError(f"a fresh start would remove {names} in {data_dir}, which streamloop did not create; "
                         "move them away or use another --data-dir")


def remove_stack_files(data_dir: Path) -> None:
    for name in FRESH_ENTRIES:
        path = data_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()
