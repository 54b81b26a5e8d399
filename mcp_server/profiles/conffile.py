"""Lossless reader, editor and writer of ``models.conf``.

The file is edited by people as well as by us, so every edit touches as few lines as possible
and an untouched document renders back byte for byte (line endings, BOM, trailing blanks,
comments and all). The document is kept as its raw lines; the parsed view (sections, entries,
line numbers) is rebuilt from them after every edit by the same classifier that parses, so the
two can never drift apart.

Format (compatible with the original wrapper's three parsers, but strict where they were silent):

- ``[section-id]`` header, id of letters, digits, ``_``, ``.``, ``-``;
- ``KEY=VALUE`` under a header; the value is everything after the first ``=`` minus surrounding
  spaces/tabs, with no inline comments and no escaping;
- ``#`` comment lines and blank lines anywhere; indentation is ignored;
- a commented-out section (``# [old-id]`` followed by ``# KEY=VALUE`` lines) is a *retired*
  profile: shown read-only, never an error.
"""

from __future__ import annotations

import difflib
import errno
import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mcp_server.errors import ConfConflictError, ConfParseError, ProfileNotFound, StorageError, ValidationError
from mcp_server.files import sync_dir, write_temp

__all__ = [
    "HEADER_RE",
    "KEY_RE",
    "SECTION_ID_RE",
    "ConfDocument",
    "Entry",
    "Section",
    "edit_lock",
    "fingerprint_of",
    "unified_diff",
]

SECTION_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HEADER_RE = re.compile(r"^\[([A-Za-z0-9_.-]+)\]$")

_BOM = "\ufeff"
_VALUE_BLANKS = " \t"
_BACKUP_STAMP = "%Y%m%dT%H%M%S%f"
_BACKUP_STAMP_RE = r"\d{8}T\d{12}"


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    line: int  # 1-based line number in the current text


@dataclass(frozen=True)
class Section:
    id: str
    line: int  # header line
    entries: tuple[Entry, ...]
    retired: bool = False

    def get(self, key: str) -> str | None:
        # Retired blocks may repeat a key; like the original parsers, the last one wins.
        for entry in reversed(self.entries):
            if entry.key == key:
                return entry.value
        return None

    def as_dict(self) -> dict[str, str]:
        return {entry.key: entry.value for entry in self.entries}


# --------------------------------------------------------------------------- line helpers


def _split_lines(text: str) -> list[str]:
    # Only "\n" ends a line ("\r\n" is "\n" with a "\r" before it); str.splitlines() would also
    # break on \x0c, \x1c, U+2028 ... and the text would no longer round-trip.
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _split_ending(raw: str) -> tuple[str, str]:
    # A lone trailing "\r" can only be on the last line; treating it as an ending keeps it out of
    # values without losing it. (Called for every line of every parse: kept to plain endswith tests.)
    if raw.endswith("\n"):
        return (raw[:-2], "\r\n") if raw.endswith("\r\n") else (raw[:-1], "\n")
    if raw.endswith("\r"):
        return raw[:-1], "\r"
    return raw, ""


def _dominant_ending(lines: Sequence[str]) -> str:
    crlf = sum(1 for raw in lines if raw.endswith("\r\n"))
    lf = sum(1 for raw in lines if raw.endswith("\n")) - crlf
    return "\r\n" if crlf > lf else "\n"


def _terminate(raw: str, ending: str) -> str:
    """``raw`` with a real line ending, so that a line can be added after it."""
    if raw.endswith("\n"):
        return raw
    return _split_ending(raw)[0] + ending


def _is_blank(raw: str) -> bool:
    return not raw.strip()


def _check_single_line(what: str, text: str) -> None:
    if "\n" in text or "\r" in text:
        raise ValidationError(what, repr(text), "must be a single line (no '\\n' or '\\r')")


def _check_key(key: str) -> None:
    if not KEY_RE.fullmatch(key):
        raise ValidationError("key", key, "a key starts with a letter or '_' and contains only letters, digits "
                              "and '_'")


def _check_id(section_id: str) -> None:
    if not SECTION_ID_RE.fullmatch(section_id):
        raise ValidationError("section", section_id, "use only letters, digits, '_', '.' and '-'")


def _clean_value(value: str) -> str:
    _check_single_line("a value", value)
    # Surrounding blanks are not part of a value in this format; storing them would only make
    # the file disagree with what we report back.
    return value.strip(_VALUE_BLANKS)


def _comment_line(text: str, ending: str) -> str:
    _check_single_line("a comment", text)
    return (text if text.startswith("#") else f"# {text}") + ending


# --------------------------------------------------------------------------- classifier


class _Builder:
    def __init__(self, section_id: str, line: int, retired: bool) -> None:
        self.id = section_id
        self.line = line
        self.retired = retired
        self.entries: list[Entry] = []
        self.first_line: dict[str, int] = {}

    def build(self) -> Section:
        return Section(self.id, self.line, tuple(self.entries), self.retired)


def _split_key_value(body: str) -> tuple[str, str]:
    key, _, value = body.partition("=")
    return key.strip(), value.strip(_VALUE_BLANKS)


def _classify(lines: Sequence[str], path: Path | str | None) -> tuple[list[Section], list[Section]]:
    """Parse raw lines into (active sections, retired blocks); raise ConfParseError on bad lines."""
    active: list[_Builder] = []
    retired: list[_Builder] = []
    by_id: dict[str, _Builder] = {}
    block: _Builder | None = None  # the retired block still collecting '# KEY=VALUE' lines
    number = 0

    def fail(reason: str) -> ConfParseError:
        return ConfParseError(path, number, reason)

    for number, raw in enumerate(lines, 1):
        body = _split_ending(raw)[0]
        text = body.strip()

        if not text:
            block = None
            continue

        if text.startswith("#"):
            inner = text[1:].strip()
            header = HEADER_RE.fullmatch(inner)
            if header:
                block = _Builder(header.group(1), number, retired=True)
                retired.append(block)
            elif block is not None and "=" in inner:
                key, value = _split_key_value(inner)
                if KEY_RE.fullmatch(key):
                    block.entries.append(Entry(key, value, number))
            continue

        block = None

        if text.startswith("["):
            header = HEADER_RE.fullmatch(text)
            if not header:
                raise fail(
                    f"malformed section header {text!r}: write it as [id], where the id uses "
                    "only letters, digits, '_', '.' and '-'"
                )
            section_id = header.group(1)
            if section_id in by_id:
                raise fail(
                    f"duplicate section [{section_id}]: it is already defined at line "
                    f"{by_id[section_id].line}; rename or remove one of them"
                )
            by_id[section_id] = _Builder(section_id, number, retired=False)
            active.append(by_id[section_id])
            continue

        if "=" not in text:
            raise fail(
                f"cannot read {text!r}: expected a [section] header, a KEY=VALUE line or a "
                "# comment"
            )

        key, value = _split_key_value(body)
        if not key:
            raise fail("empty key: a KEY=VALUE line needs a name before the '='")
        if not KEY_RE.fullmatch(key):
            raise fail(
                f"invalid key {key!r}: a key starts with a letter or '_' and contains only "
                "letters, digits and '_'"
            )
        if not active:
            raise fail(
                f"{key}= appears before any section header: host settings belong under "
                "[global] and profile keys under a [profile] section"
            )
        # A key after a retired block still belongs to the last active section above it, as
        # in the original parsers, which skipped comments entirely.
        section = active[-1]
        if key in section.first_line:
            raise fail(
                f"duplicate key {key!r} in section [{section.id}]: first set at line "
                f"{section.first_line[key]}; keep only one"
            )
        section.first_line[key] = number
        section.entries.append(Entry(key, value, number))

    return [b.build() for b in active], [b.build() for b in retired]


# --------------------------------------------------------------------------- document


def _decode(data: bytes, path: Path | str | None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfParseError(
            path, line, f"not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None


class ConfDocument:
    """One models.conf: raw lines plus the parsed view of them."""

    def __init__(self, lines: list[str], bom: str = "", path: Path | str | None = None) -> None:
        self.path: Path | None = Path(path) if path is not None else None
        self._bom = bom
        self._lines: list[str] = []
        self._active: list[Section] = []
        self._by_id: dict[str, Section] = {}
        self._retired: list[Section] = []
        self._fingerprint: str | None = None
        self._commit(lines)

    # ---- reading

    @classmethod
    def parse(cls, text: str | bytes, path: Path | str | None = None) -> ConfDocument:
        if isinstance(text, bytes):
            text = _decode(text, path)
        bom = _BOM if text.startswith(_BOM) else ""
        return cls(_split_lines(text[len(bom):]), bom, path)

    @classmethod
    def load(cls, path: Path | str) -> ConfDocument:
        data = Path(path).read_bytes()
        doc = cls.parse(data, path)
        doc._fingerprint = hashlib.sha256(data).hexdigest()
        return doc

    def copy(self) -> ConfDocument:
        """An independent document with the same lines, path and fingerprint: edits to it (a dry
        run, a change that fails validation) leave this one as it was."""
        twin = ConfDocument(list(self._lines), self._bom, self.path)
        twin._fingerprint = self._fingerprint
        return twin

    @property
    def fingerprint(self) -> str | None:
        """sha256 of the bytes last read from or written to ``path``; None if never on disk."""
        return self._fingerprint

    def render(self) -> str:
        return self._bom + "".join(self._lines)

    def sections(self) -> list[Section]:
        return list(self._active)

    def retired(self) -> list[Section]:
        return list(self._retired)

    def section(self, id: str) -> Section | None:
        # By index: lint and edits look sections up once per profile, and a scan made that quadratic.
        return self._by_id.get(id)

    def ids(self) -> list[str]:
        return [section.id for section in self._active]

    # ---- editing

    def set(self, id: str, key: str, value: str) -> None:
        """Set ``key`` in section ``id``; surrounding spaces/tabs of ``value`` are dropped."""
        _check_key(key)
        value = _clean_value(value)
        section = self._require(id)
        lines = list(self._lines)
        existing = next((e for e in section.entries if e.key == key), None)
        if existing is not None:
            index = existing.line - 1
            body, ending = _split_ending(lines[index])
            head, _, old = body.partition("=")
            # Keep the author's 'KEY = value' spacing, but not blanks that were all the value had.
            gap = old[: len(old) - len(old.lstrip(_VALUE_BLANKS))] if old.strip(_VALUE_BLANKS) else ""
            lines[index] = f"{head}={gap}{value}{ending}"
        else:
            after = (section.entries[-1].line if section.entries else section.line) - 1
            ending = self._ending()
            if lines[after].endswith("\n"):
                new_line = f"{key}={value}{ending}"
            else:
                # Inserting after the last line: it gains the ending, the new line keeps the
                # file's missing final newline.
                lines[after] = _terminate(lines[after], ending)
                new_line = f"{key}={value}"
            lines.insert(after + 1, new_line)
        self._commit(lines)

    def unset(self, id: str, key: str) -> bool:
        section = self._require(id)
        entry = next((e for e in section.entries if e.key == key), None)
        if entry is None:
            return False
        lines = list(self._lines)
        del lines[entry.line - 1]
        self._commit(lines)
        return True

    def add_section(
        self,
        id: str,
        entries: Sequence[tuple[str, str]] | dict[str, str],
        comments: Iterable[str] = (),
    ) -> None:
        _check_id(id)
        if self.section(id) is not None:
            raise ValidationError("section", id, f"already exists at line {self.section(id).line}")
        pairs = list(entries.items()) if isinstance(entries, dict) else list(entries)
        seen: set[str] = set()
        for key, _ in pairs:
            _check_key(key)
            if key in seen:
                raise ValidationError(key, "", f"given twice for section [{id}]")
            seen.add(key)

        ending = self._ending()
        lines = list(self._lines)
        if lines:
            lines[-1] = _terminate(lines[-1], ending)
            if not _is_blank(lines[-1]):
                lines.append(ending)
        lines.extend(_comment_line(text, ending) for text in comments)
        lines.append(f"[{id}]{ending}")
        lines.extend(f"{key}={_clean_value(value)}{ending}" for key, value in pairs)
        self._commit(lines)

    def comment_block(self, id: str) -> tuple[int, list[str]]:
        """The comment lines directly above section ``id``'s header: (first line number, texts).

        The block is what people write about a profile (where its facts come from, the memory math,
        "NOT YET TESTED", measured speeds): the ``#`` lines that touch the header from above. A blank
        line ends it, and so do the lines of a retired section, which belong to that section. Texts
        are returned as written, with their ``#``. An empty block starts at the header's line."""
        section = self._require(id)
        retired_lines = {line for block in self._retired for line in (block.line, *(e.line for e in block.entries))}
        start = section.line
        while start > 1:
            raw = _split_ending(self._lines[start - 2])[0].strip()
            if not raw.startswith("#") or (start - 1) in retired_lines:
                break
            start -= 1
        texts = [_split_ending(self._lines[n - 1])[0].strip() for n in range(start, section.line)]
        return start, texts

    def set_comments(self, id: str, comments: Iterable[str]) -> None:
        """Replace section ``id``'s comment block (see :meth:`comment_block`) with ``comments``; every
        other line stays byte for byte. A text without a leading ``#`` gets ``# ``."""
        start, old = self.comment_block(id)
        ending = self._ending()
        new = [_comment_line(text, ending) for text in comments]
        lines = list(self._lines)
        lines[start - 1:start - 1 + len(old)] = new
        self._commit(lines)

    def retire_section(self, id: str, note: str | None = None) -> None:
        """Comment the section out in place, so it can be read (and revived) later."""
        section = self._require(id)
        lines = list(self._lines)
        # Only the header and the KEY=VALUE lines change; comments and blank lines in the
        # section already read correctly once it is retired.
        for number in (section.line, *(e.line for e in section.entries)):
            lines[number - 1] = "# " + lines[number - 1]
        if note is not None:
            lines.insert(section.line - 1, _comment_line(note, self._ending()))
        self._commit(lines)

    # ---- writing

    def save(
        self,
        path: Path | str | None = None,
        *,
        backup_dir: Path | None = None,
        keep_backups: int = 20,
    ) -> Path | None:
        """Write atomically; return the backup made, if any.

        Refuses (ConfConflictError, nothing written) when the file this document was loaded from
        has changed on disk since, so that a concurrent edit is never silently overwritten. Callers
        that read, edit and save hold :func:`edit_lock` across all three, which makes this check
        exact between llama-pilot processes; against an editor that ignores the lock it still
        narrows the window to the moment of the rename.

        The new text is written (and synced) before the backup is taken, and old backups are only
        pruned after the rename: a full or read-only disk fails before anything else changes.
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("this document has no path; pass one to save()")  # a caller's bug, not input
        if backup_dir is not None and keep_backups < 1:
            raise ValueError("keep_backups must be at least 1")
        self._check_unchanged(target)

        # Write through a symlink, not over it.
        real = Path(os.path.realpath(target))
        data = self.render().encode("utf-8")
        try:
            tmp = write_temp(real, data)
        except OSError as exc:
            raise StorageError.from_os_error(exc, "save", real, fix=_conf_fix(exc, real)) from None
        backup = None
        try:
            if backup_dir is not None and real.exists():
                backup = _backup(real, Path(backup_dir), target.name)
            os.replace(tmp, real)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            where = real if backup is not None or backup_dir is None else Path(backup_dir)
            raise StorageError.from_os_error(exc, "save" if where == real else "back up to", where) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        sync_dir(real.parent)
        if backup is not None:
            _prune_backups(Path(backup_dir), target.name, keep_backups)  # type: ignore[arg-type]
        self.path = target
        self._fingerprint = hashlib.sha256(data).hexdigest()
        return backup

    # ---- internals

    def _commit(self, lines: list[str]) -> None:
        # Classify first: a failed edit must leave the document as it was.
        self._active, self._retired = _classify(lines, self.path)
        self._by_id = {section.id: section for section in self._active}
        self._lines = lines

    def _require(self, id: str) -> Section:
        section = self.section(id)
        if section is None:
            raise ProfileNotFound(id, self.ids())
        return section

    def _ending(self) -> str:
        return _dominant_ending(self._lines)

    def _check_unchanged(self, target: Path) -> None:
        if self._fingerprint is None or self.path is None:
            return
        if os.path.abspath(target) != os.path.abspath(self.path):
            return  # "save as": the loaded file is not being overwritten
        current = fingerprint_of(target)
        if current is None:
            raise ConfConflictError(
                f"{target} was removed after it was read; nothing was written. Reload the file "
                "and re-apply the edit."
            )
        if current != self._fingerprint:
            raise ConfConflictError(
                f"{target} was changed on disk after it was read; nothing was written. Reload the "
                "file and re-apply the edit."
            )


def _backup(source: Path, backup_dir: Path, name: str) -> Path:
    backup_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc)
    # Two saves in one microsecond must not overwrite each other's backup.
    while (backup_dir / f"{name}.{stamp.strftime(_BACKUP_STAMP)}").exists():
        stamp += timedelta(microseconds=1)
    backup = backup_dir / f"{name}.{stamp.strftime(_BACKUP_STAMP)}"
    try:
        shutil.copy2(source, backup)
    except BaseException:
        backup.unlink(missing_ok=True)  # a half-copied backup would push a good one out later
        raise
    return backup


def _prune_backups(backup_dir: Path, name: str, keep: int) -> None:
    pattern = re.compile(re.escape(name) + r"\." + _BACKUP_STAMP_RE)
    # Timestamps sort lexically in time order.
    backups = sorted(p for p in backup_dir.iterdir() if pattern.fullmatch(p.name))
    for old in backups[:-keep]:
        old.unlink(missing_ok=True)


def _conf_fix(exc: OSError, real: Path) -> str | None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free space on the disk holding {real.parent}, then try again"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"make {real.parent} writable (the file is replaced atomically, so its folder must be), "
                "or copy models.conf to a writable folder and pass --config")
    return None


@contextmanager
def edit_lock(path: Path | str) -> Iterator[None]:
    """Exclusive across processes for one models.conf: hold it from the read an edit checks to the rename.

    The lock is an flock on the file's folder (after following a symlink to the real file), not on
    the file: a rename replaces the file's inode, and a lock on the old inode would not stop the
    next writer. Locking the folder also leaves no lock file beside the user's models.conf.
    """
    folder = Path(os.path.realpath(path)).parent
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise StorageError.from_os_error(exc, "lock the folder of", folder) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def fingerprint_of(path: Path | str) -> str | None:
    """sha256 of the file's bytes now, or None if it is gone."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


_HUNK_RE = re.compile(r"^@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@")
_CONTEXT = 3


def unified_diff(before: str, after: str, path: str) -> str:
    """The unified diff (3 lines of context) of two texts.

    Lines both texts share at the start and the end are cut off (all but the context) before
    difflib compares the rest: an edit of a 10 MB file changes a few lines, and matching 400k equal
    lines cost seconds. The hunk headers are shifted back to the full files' line numbers.
    """
    a, b = _split_lines(before), _split_lines(after)
    head = 0
    while head < len(a) and head < len(b) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < len(a) - head and tail < len(b) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    start = max(0, head - _CONTEXT)
    keep_tail = max(0, tail - _CONTEXT)
    a_mid, b_mid = a[start:len(a) - keep_tail], b[start:len(b) - keep_tail]
    out = []
    for line in difflib.unified_diff(a_mid, b_mid, fromfile=f"a/{path}", tofile=f"b/{path}", n=_CONTEXT):
        if start and (match := _HUNK_RE.match(line)):
            line = _shift_hunk(match, line, start)
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        out.append(line)
    return "".join(out)


def _shift_hunk(match: re.Match[str], line: str, offset: int) -> str:
    def at(number: str, count: str | None) -> str:
        # difflib writes a range's start as 0 (not offset) only for an empty range at the very top.
        value = int(number)
        return f"{value + offset if value or count != ',0' else offset}{count or ''}"

    old, new = at(match.group(1), match.group(2)), at(match.group(3), match.group(4))
    return f"@@ -{old} +{new} @@{line[match.end():]}"
