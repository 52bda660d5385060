"""The trash: where ``clean`` (and ``pull``, for local files it replaces) moves data instead of deleting it.

One trash entry is ``paths.trash_entry(<timestamp>, <what>)``: a ``trash.json`` manifest and a ``files/`` folder
holding the moved items, numbered. The manifest names each item's original path, size and whether it arrived;
it is rewritten (atomically) before each item moves, so an entry interrupted half-way still lists what it holds.

A move is atomic per item: a rename when source and trash share a filesystem (the trash lives in the cache);
otherwise (a data directory symlinked to another disk) copy into the entry under a temporary name, verify every
file's size and sha256 against the source, rename the copy into place, then delete the source. An item is
whole at exactly one of its two places at every moment that matters; a kill between "copied" and "deleted"
leaves it at both, never at neither.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from neuroscope.store import atomic, paths

MANIFEST = "trash.json"
FORMAT = "neuroscope-trash/1"
STORE = "files"


class TrashError(Exception):
    """A trash operation that cannot go ahead; the message is one line a user can act on."""


@dataclass
class Item:
    original: str  # absolute path it came from (and goes back to)
    size: int  # bytes of its files
    kind: str  # "file" or "dir"
    moved: bool = False
    replaced_by: str | None = None  # sha256 of the file put in its place (pull), which undo may overwrite

    def as_dict(self) -> dict:
        return {"original": self.original, "size": self.size, "kind": self.kind, "moved": self.moved,
                "replaced_by": self.replaced_by}


@dataclass
class Entry:
    path: Path
    what: str
    created: str  # ISO 8601, UTC
    items: list[Item] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(i.size for i in self.items if i.moved)

    def stored(self, index: int) -> Path:
        return self.path / STORE / str(index)

    def save(self) -> None:
        atomic.write_json(self.path / MANIFEST, {"format": FORMAT, "what": self.what, "created": self.created,
                                                 "items": [i.as_dict() for i in self.items]})

    @classmethod
    def load(cls, path: Path) -> Entry:
        import json

        try:
            data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            items = [Item(original=str(i["original"]), size=int(i["size"]), kind=str(i["kind"]),
                          moved=bool(i["moved"]), replaced_by=i.get("replaced_by")) for i in data["items"]]
            return cls(path, str(data["what"]), str(data["created"]), items)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrashError(f"trash entry {path} has no readable {MANIFEST}: {exc}") from None


# ------------------------------------------------------------------------------------------------ sizes
def tree_size(path: Path) -> int:
    """Bytes of the regular files at or under ``path`` (symlinks are not followed)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return st.st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except FileNotFoundError:
                pass
    return total


def human(n: int) -> str:
    from rich.filesize import decimal

    return decimal(n)


# ------------------------------------------------------------------------------------------------ moves
def _files(path: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (size, sha256) of every file at or under ``path``."""
    if not path.is_dir():
        return {"": (path.stat().st_size, paths.file_sha256(path))}
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(path).as_posix()] = (p.stat().st_size, paths.file_sha256(p))
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def move(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` (which must not exist): a rename, or copy + verify + delete across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
        atomic.fsync_dir(dst.parent)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    _remove(tmp)
    try:
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, tmp, symlinks=True)
        else:
            shutil.copy2(src, tmp, follow_symlinks=False)
        if _files(tmp) != _files(src):
            raise OSError(f"the copy of {src} differs from the original")
        os.rename(tmp, dst)
        atomic.fsync_dir(dst.parent)
    except BaseException:
        _remove(tmp)
        raise
    _remove(src)


# ------------------------------------------------------------------------------------------------ entries
def _timestamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S.%fZ")


def new_entry(what: str) -> Entry:
    now = datetime.now(timezone.utc)
    path = paths.trash_entry(_timestamp(now), what)
    while path.exists():  # two entries in one microsecond
        now = datetime.fromtimestamp(now.timestamp() + 1e-6, timezone.utc)
        path = paths.trash_entry(_timestamp(now), what)
    (path / STORE).mkdir(parents=True)
    return Entry(path, what, now.isoformat(timespec="seconds"))


def trash(what: str, targets: list[Path], *, replaced_by: dict[Path, str] | None = None) -> Entry | None:
    """Move every existing path of ``targets`` into one new trash entry; None when none exists."""
    targets = [t for t in targets if t.exists() or t.is_symlink()]
    if not targets:
        return None
    entry = new_entry(what)
    for target in targets:
        item = Item(original=str(target.absolute()), size=tree_size(target),
                    kind="dir" if target.is_dir() and not target.is_symlink() else "file",
                    replaced_by=(replaced_by or {}).get(target))
        entry.items.append(item)
        entry.save()  # listed before it moves: an interrupted entry still says what it may hold
        move(target, entry.stored(len(entry.items) - 1))
        item.moved = True
    entry.save()
    return entry


def entries() -> list[Entry]:
    """Every readable trash entry, newest first."""
    root = paths.trash_dir()
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir(), reverse=True):
        if p.is_dir() and (p / MANIFEST).is_file():
            found.append(Entry.load(p))
    return found


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _overwritten(stored: Path, original: Path, replaced_by: str | None) -> list[Path]:
    """The paths at or under ``original`` that restoring ``stored`` there would overwrite: file by file, so a
    directory created since (empty, or holding other files) is merged into, never a reason to refuse."""
    if not _present(original):
        return []
    if _is_dir(stored) and _is_dir(original):
        return [p for child in sorted(stored.iterdir()) for p in _overwritten(child, original / child.name, None)]
    if replaced_by and original.is_file() and paths.file_sha256(original) == replaced_by:
        return []  # exactly what replaced it (pull) is there: putting the old file back is the undo
    return [original]


def _put_back(stored: Path, original: Path) -> None:
    """Move ``stored`` to ``original``, merging into directories that exist there (checked by _overwritten)."""
    if _is_dir(stored) and _is_dir(original):
        for child in sorted(stored.iterdir()):
            _put_back(child, original / child.name)
        stored.rmdir()
        return
    if _present(original):  # the file a pull put in its place
        original.unlink()
    move(stored, original)


def restore(entry: Entry) -> list[Item]:
    """Put every item of ``entry`` back at its original path and delete the entry. Directories created since are
    merged into; refuses (changing nothing) when any file would be overwritten, naming it."""
    items = []
    for i, item in enumerate(entry.items):
        if not entry.stored(i).exists():
            continue  # never arrived (a move interrupted before it began)
        if not item.moved and Path(item.original).exists():
            continue  # a cross-filesystem copy interrupted before its source was deleted: the source is whole
        items.append((i, item))  # (a rename interrupted before the manifest said so still counts as moved)
    clashes = [p for i, item in items for p in _overwritten(entry.stored(i), Path(item.original), item.replaced_by)]
    if clashes:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        named = ", ".join(str(p) for p in clashes[:3])
        raise TrashError(f"cannot undo {entry.path.name}: {named}{more} would be overwritten (created after it was "
                         "trashed); move it away first (nothing was restored)")
    for i, item in items:
        _put_back(entry.stored(i), Path(item.original))
    shutil.rmtree(entry.path)
    return [item for _, item in items]


def empty() -> tuple[int, int]:
    """Delete every trash entry for good: (entries, bytes)."""
    found = [p for p in paths.trash_dir().iterdir()] if paths.trash_dir().is_dir() else []
    size = sum(tree_size(p) for p in found)
    for p in found:
        _remove(p)
    return len(found), size
