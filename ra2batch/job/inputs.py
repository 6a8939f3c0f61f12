"""Which files the job scores and whose radiographs they are.

The archive is listed once on the driver (paths, sizes and modification times, never the bytes);
a local folder safely (links that loop, dangle or leave it, FIFOs, sockets and devices are entries
with a problem, never read). Each file is identified by its stem, ``{Patient_ID}-{limb}`` or
``{Patient_ID}-{visit}-{limb}``, or by a manifest for archives named otherwise. A DICOM file
(``.dcm``, ``.dicom``) may leave the limb out, ``{Patient_ID}`` or ``{Patient_ID}-{visit}`` (no part a
limb code): its limb is then its header's (:func:`header_limb`), read where it is decoded, never on
the driver. A file that cannot be identified is kept with a ``problem`` so that it becomes an images
row with status ``error``: every listed file is accounted for.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from ra2batch.catalogue import ID_COLUMN, LIMBS
from ra2batch.imaging.readers import DICOM_SUFFIXES, SUPPORTED_SUFFIXES
from ra2batch.storage import Location, is_remote, resolve

#: The files that are radiographs: those the readers decode (scoring, nightly and training alike).
RADIOGRAPH_SUFFIXES = SUPPORTED_SUFFIXES
LISTING_COLUMNS = ("path", ID_COLUMN, "visit", "limb", "size_bytes", "mtime", "problem")
#: The one naming convention of radiographs (scoring, nightly, training), as messages state it.
NAMING = "{Patient_ID}-{LH|RH|LF|RF} or {Patient_ID}-{visit}-{limb}"
_NAMING = f"expected {NAMING}, or pass --manifest"


@dataclass(frozen=True)
class Listing:
    """The files to score (``files``: one row per file, columns ``LISTING_COLUMNS``, sorted by path)
    and the number of other files under the input that are not radiographs (``ignored``)."""

    files: pd.DataFrame
    ignored: int


def is_radiograph(path: str) -> bool:
    return path.lower().endswith(RADIOGRAPH_SUFFIXES)


#: A file's name and stem (the name up to its last dot), and a stem's parts: split at its last two
#: dashes (``Patient_ID`` may hold dashes itself), or at its only one.
_NAME = r"(?P<name>(?P<stem>[^/]*?)(?:\.[^./]*)?)$"
_STEM = r"^(?:(?P<pid_visit>.*)-(?P<visit>[^-]*)|(?P<pid>[^-]*))-(?P<limb>[^-]*)$"
#: A DICOM stem without its limb: ``{Patient_ID}`` or ``{Patient_ID}-{visit}``, split at its last dash;
#: a stem with a part that is a limb code (``P1-LH-2``) is a misnamed file, not one of these.
_BARE_STEM = r"^(?:(?P<pid_visit>.*)-(?P<visit>[^-]*)|(?P<pid>[^-]*))$"
_LIMB_PART = "(?i)(^|-)(" + "|".join(LIMBS) + ")(-|$)"
_DICOM_NAME = "(?i)(" + "|".join(re.escape(s) for s in DICOM_SUFFIXES) + ")$"


def _patient_visit(parts: pa.StructArray) -> tuple[pa.Array, pa.Array]:
    """``Patient_ID`` and visit of stems matched by ``_STEM`` or ``_BARE_STEM``."""
    bare = pc.equal(parts.field("pid_visit"), "")
    return (pc.if_else(bare, parts.field("pid"), parts.field("pid_visit")),
            pc.if_else(bare, pa.scalar(None, pa.string()), parts.field("visit")))


def _placed(pid: pa.Array, visit: pa.Array) -> pa.Array:
    """A patient is named, and a visit too where the stem has one."""
    return pc.fill_null(pc.and_(pc.not_equal(pid, ""), pc.or_kleene(pc.is_null(visit), pc.not_equal(visit, ""))),
                        False)


def parse_names(paths: pd.Series) -> pd.DataFrame:
    """``Patient_ID``, ``visit``, ``limb`` and ``problem`` of each file from its stem, vectorised (an
    archive lists hundreds of thousands): ``{Patient_ID}-{limb}`` or ``{Patient_ID}-{visit}-{limb}``,
    the limb in any case; a DICOM file's stem may leave the limb out (``limb`` null: its header's). A
    name that gives no patient and limb gets a one-line ``problem`` instead."""
    found = pc.extract_regex(pa.array(paths.astype(object), pa.string()), _NAME)
    stem = found.field("stem")
    parts = pc.extract_regex(stem, _STEM)
    pid, visit = _patient_visit(parts)
    limb = pc.utf8_upper(parts.field("limb"))
    named = pc.and_(pc.fill_null(pc.is_in(limb, value_set=pa.array(LIMBS)), False), _placed(pid, visit))
    bare_pid, bare_visit = _patient_visit(pc.extract_regex(stem, _BARE_STEM))
    from_header = pc.and_(pc.and_(pc.invert(named), pc.match_substring_regex(found.field("name"), _DICOM_NAME)),
                          pc.and_(pc.invert(pc.match_substring_regex(stem, _LIMB_PART)), _placed(bare_pid, bare_visit)))
    problem = pc.binary_join_element_wise("file name '", found.field("name"),
                                          f"' gives no patient and limb ({_NAMING})", "")

    def keep(values: pa.Array, where: pa.Array) -> list:
        return pc.if_else(where, values, pa.scalar(None, pa.string())).to_pylist()

    return pd.DataFrame({ID_COLUMN: keep(pc.if_else(named, pid, bare_pid), pc.or_(named, from_header)),
                         "visit": keep(pc.if_else(named, visit, bare_visit), pc.or_(named, from_header)),
                         "limb": keep(limb, named), "problem": keep(problem, pc.invert(pc.or_(named, from_header)))},
                        index=paths.index, dtype=object)


def parse_name(path: str) -> tuple[str, str | None, str] | str:
    """:func:`parse_names` of one file: ``(Patient_ID, visit, limb)``, or the problem.

    ``UAB001-LH.jpg`` gives ``("UAB001", None, "LH")``; ``UAB001-V2-rh.dcm`` gives ``("UAB001", "V2", "RH")``;
    ``UAB001-V2.dcm`` gives ``("UAB001", "V2", None)``: its header names the limb.
    """
    row = parse_names(pd.Series([path])).iloc[0]
    return row["problem"] if row["problem"] is not None else (row[ID_COLUMN], row["visit"], row["limb"])


#: How a DICOM header names a limb: ImageLaterality (or Laterality) and BodyPartExamined, any case.
_SIDES = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}
_BODY_PARTS = {"HAND": "H", "HANDS": "H", "FOOT": "F", "FEET": "F"}


def header_limb(meta: Mapping[str, Any]) -> str | None:
    """The limb a decoded DICOM's header gives (``readers.Radiograph.meta``: ``laterality`` L or R and
    ``body_part`` HAND or FOOT make ``LH`` ... ``RF``), else ``None`` (no header, or B, CHEST...)."""
    side = _SIDES.get(str(meta.get("laterality") or "").strip().upper())
    part = _BODY_PARTS.get(str(meta.get("body_part") or "").strip().upper())
    return side + part if side and part else None


def no_limb_problem(path: str, meta: Mapping[str, Any]) -> str:
    """Why a DICOM named without a limb cannot be placed: its header names none either."""
    return (f"file name '{PurePosixPath(path).name}' gives no limb and neither does its DICOM header "
            f"(ImageLaterality {meta.get('laterality')!r}, BodyPartExamined {meta.get('body_part')!r}; "
            f"L or R with HAND or FOOT name one): {_NAMING}")


def fs_path(uri: str) -> str:
    """The path of a listed file inside its pyarrow filesystem (``s3://b/k`` -> ``b/k``)."""
    return uri[len("s3://"):] if is_remote(uri) else uri


def _uri(loc: Location, fs_p: str) -> str:
    return f"s3://{fs_p}" if is_remote(loc.uri) else fs_p


def _absolute(loc: Location, path: str) -> str:
    """A user-given path (absolute URI/path, or relative to the input root) as a listed URI."""
    if is_remote(path) or path.startswith("/"):
        return path
    if "://" in path:
        raise ValueError(f"unsupported path {path!r}: use a local path or s3://bucket/key")
    return loc.uri_of(path)


#: What the listing learns of a file: its size and modification time (nanoseconds since the epoch,
#: ``None`` where the store gives none), or why it is not read.
Stat = tuple[int, int | None] | str


def _stat(info: pafs.FileInfo) -> tuple[int, int | None]:
    return int(info.size), info.mtime_ns


_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"))


def _local_entry(entry: os.DirEntry, root: str, follow_links: bool) -> tuple[str, Any]:
    """``("dir", path)``, ``("file", (size, mtime_ns))`` or ``("problem", why)`` for one folder entry.
    Links are followed only when they stay inside ``root`` (a real path), or with ``follow_links``."""
    try:
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            try:
                info = os.stat(entry.path)
            except OSError as e:
                why = "a symbolic link loop" if e.errno == errno.ELOOP else f"a dangling symbolic link (to {target})"
                return "problem", f"{why}: not read"
            if not follow_links and os.path.commonpath([root, target]) != root:
                return "problem", (f"a symbolic link to {target}, outside the input folder: not followed (pass "
                                   "--follow-links to follow links that leave it)")
        else:
            info = entry.stat(follow_symlinks=False)
    except OSError as e:
        return "problem", f"cannot read its details: {e.strerror or e}"
    if stat.S_ISDIR(info.st_mode):
        return "dir", entry.path
    if stat.S_ISREG(info.st_mode):
        return "file", (int(info.st_size), int(info.st_mtime_ns))
    kind = next((name for test, name in _SPECIAL if test(info.st_mode)), "not a regular file")
    return "problem", f"{kind}, not a regular file: not read"


def _walk_local(top: str, follow_links: bool) -> tuple[dict[str, Stat], int]:
    """A local folder's radiographs, listed safely: each folder once (a link back into one already
    listed, as in ``loop -> .``, is not listed again), and every link that dangles, loops or leaves
    the folder, and every FIFO, socket or device, an entry with its problem (never read)."""
    root = os.path.realpath(top)
    found: dict[str, Stat] = {}
    ignored, seen, pending = 0, set(), [top]
    while pending:
        folder = pending.pop()
        info = os.stat(folder)
        identity = (info.st_dev, info.st_ino)
        if identity in seen:
            continue
        seen.add(identity)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            found[folder] = f"cannot list this folder: {e.strerror or e}"
            continue
        for entry in entries:
            kind, value = _local_entry(entry, root, follow_links)
            if kind == "dir":
                pending.append(value)
            elif kind == "problem" or is_radiograph(entry.path):
                found[entry.path] = value
            else:
                ignored += 1
    return found, ignored


def _walk(loc: Location, follow_links: bool = False) -> tuple[dict[str, Stat], int]:
    """Radiograph URIs under ``loc`` with their :data:`Stat`, and the count of other files."""
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {loc.uri} does not exist")
    if info.type == pafs.FileType.Directory and not is_remote(loc.uri):
        return _walk_local(loc.path, follow_links)
    infos = [info] if info.type == pafs.FileType.File else loc.fs.get_file_info(
        pafs.FileSelector(loc.path, recursive=True))
    found: dict[str, Stat] = {}
    ignored = 0
    for i in infos:
        if i.type != pafs.FileType.File:
            continue
        if is_radiograph(i.path):
            found[_uri(loc, i.path)] = _stat(i)
        else:
            ignored += 1
    return found, ignored


def _file_stats(loc: Location, uris: Sequence[str]) -> dict[str, Stat]:
    """Size and modification time of the given files; files that do not exist are left out."""
    infos = loc.fs.get_file_info([fs_path(u) for u in uris]) if uris else []
    return {u: _stat(i) for u, i in zip(uris, infos) if i.type == pafs.FileType.File}


def read_manifest(uri: str, loc: Location, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """A manifest (CSV or Parquet; columns ``path``, ``Patient_ID``, ``limb``, optional ``visit``)
    indexed by the absolute URI of each path. Raises ``ValueError`` naming the problem."""
    m_loc = resolve(uri, storage_options)
    if not m_loc.exists():
        raise ValueError(f"manifest {uri} does not exist")
    with m_loc.fs.open_input_file(m_loc.path) as f:
        if m_loc.path.lower().endswith(".csv"):
            df = pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""])
        else:
            df = pd.read_parquet(f)
    missing = [c for c in ("path", ID_COLUMN, "limb") if c not in df.columns]
    if missing:
        raise ValueError(f"manifest {uri}: missing column(s) {', '.join(missing)}; "
                         f"expected path, {ID_COLUMN}, limb and optionally visit")
    df = df.assign(path=[_absolute(loc, str(p)) for p in df["path"]])
    twice = df["path"][df["path"].duplicated()]
    if len(twice):
        raise ValueError(f"manifest {uri}: path {twice.iloc[0]} is listed more than once")
    if "visit" not in df.columns:
        df["visit"] = None
    return df.set_index("path")[[ID_COLUMN, "visit", "limb"]]


def _from_manifest(uri: str, manifest: pd.DataFrame) -> tuple[str | None, str | None, str | None, str | None]:
    """``(Patient_ID, visit, limb, problem)`` of one file, as the manifest names it."""
    if uri not in manifest.index:
        return None, None, None, "file is not in the manifest, so its patient and limb are unknown"
    row = manifest.loc[uri]
    pid, visit, limb = (None if pd.isna(v) else str(v) for v in (row[ID_COLUMN], row["visit"], row["limb"]))
    if not pid:
        return None, visit, limb, "the manifest gives no Patient_ID for this file"
    if (limb or "").upper() not in LIMBS:
        return pid, visit, None, f"the manifest gives limb {limb!r}; expected one of {', '.join(LIMBS)}"
    return pid, visit, limb.upper(), None


def list_inputs(
    input_uri: str,
    *,
    manifest: str | None = None,
    paths: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    follow_links: bool = False,
) -> Listing:
    """The files to score under ``input_uri`` (a folder, a single file, or ``s3://bucket/prefix``).

    ``paths`` restricts the job to those files (absolute, or relative to ``input_uri``); a path that
    does not exist is kept with the problem "not found". With a ``manifest``, its rows name the
    patients; a manifest row whose file does not exist is kept the same way. A local folder is
    listed without following links that leave it (unless ``follow_links``); see :func:`_walk_local`.
    """
    loc = resolve(input_uri, storage_options)
    table = read_manifest(manifest, loc, storage_options) if manifest else None
    if paths is not None:
        wanted = sorted({_absolute(loc, p) for p in paths})
        stats, ignored = _file_stats(loc, wanted), 0
    else:
        stats, ignored = _walk(loc, follow_links)
        extra = [] if table is None else [u for u in table.index if u not in stats]
        stats.update(_file_stats(loc, extra))
        wanted = sorted(set(stats) | set(extra))
    files = pd.DataFrame({"path": pd.Series(wanted, dtype=object)})
    if table is None:
        files = files.join(parse_names(files["path"]))
    else:
        files[[ID_COLUMN, "visit", "limb", "problem"]] = [_from_manifest(uri, table) for uri in wanted] or None
    found = [stats.get(uri) for uri in wanted]
    missing = "file not found" + (" (listed in the manifest)" if table is not None else "")
    files["problem"] = [missing if f is None else f if isinstance(f, str) else p for f, p in zip(found, files["problem"])]
    read = [f if isinstance(f, tuple) else None for f in found]
    files["size_bytes"] = pd.array([f[0] if f else None for f in read], dtype="Int64")
    files["mtime"] = pd.array([f[1] if f else None for f in read], dtype="Int64")
    files = files[list(LISTING_COLUMNS)]
    # UTC, to the microsecond the tables keep
    files["mtime"] = pd.to_datetime(files["mtime"].astype("Int64") // 1000, unit="us", utc=True)
    return Listing(files=files, ignored=ignored)
