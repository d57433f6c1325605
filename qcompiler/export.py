"""The export directory: writing it without touching anything qcompiler did not write, and
loading it back.

    cm.export("out/")                 # model.so, encodings.json, manifest.json, report.txt
    m = qcompiler.load("out/")        # the library, loaded (host) or run under qemu (arm_cpu)
    y = m(x)                          # float in, float out, bit for bit what cm(x) gives

``write_export`` writes into
  - a new directory (made, with its missing parents, with the user's umask), atomically: the
    files are written in a hidden sibling that is renamed into place when complete;
  - an empty directory, or one holding a previous qcompiler export (recognised by its
    ``manifest.json``): exactly the files the previous export listed are replaced, other
    files there are left alone;
  - any other directory only with ``overwrite=True``, which replaces it whole; never the
    working directory, an ancestor of it, the home directory or a filesystem root.
A failed export leaves the directory as it was (and creates nothing).

The manifest names its format and version: version 2 adds ``kernels``, which kernel each
layer got (qcompiler.kernel_report); version 1 manifests load the same, without it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import QCompilerError

MANIFEST = "manifest.json"
FORMAT = "qcompiler-export"
FORMAT_VERSION = 2  # 2: the manifest records each layer's kernel ("kernels")
# The manifest of exports written before the format was named: these keys and these files.
_LEGACY_KEYS = {"target", "library", "inputs", "scheme"}
_LEGACY_FILES = ("encodings.json", MANIFEST, "report.txt")


class ExportError(QCompilerError):
    """A compiled model could not be exported, or an export could not be loaded (the
    directory is left as it was)."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor)


def previous_export_files(directory: Path) -> Optional[list[str]]:
    """The files a previous qcompiler export wrote into ``directory`` (from its manifest),
    or None if ``directory`` holds no qcompiler export."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    if manifest.get("format") == FORMAT and isinstance(manifest.get("files"), list):
        files = [str(f) for f in manifest["files"]]
    elif _LEGACY_KEYS <= manifest.keys() and isinstance(manifest.get("library"), str):
        files = [manifest["library"], *_LEGACY_FILES]
    else:
        return None
    # only plain names inside the directory: a manifest never points elsewhere
    return [f for f in files if f and Path(f).name == f and f not in (".", "..")]


def _protected(directory: Path) -> Optional[str]:
    cwd = Path.cwd().resolve()
    if directory == cwd:
        return "it is the working directory"
    if directory in cwd.parents:
        return "it holds the working directory"
    if directory == Path.home().resolve():
        return "it is the home directory"
    if directory == Path(directory.anchor):
        return "it is a filesystem root"
    return None


def _check_destination(directory: Path, overwrite: bool, names: list[str]) -> str:
    """'new', 'empty', 'previous' or 'replace'; an ExportError when the export must not go there."""
    existing = _first_existing(directory)
    if existing != directory and not existing.is_dir():
        raise ExportError(f"cannot export to {directory}: {existing} is a file, not a directory; choose a path "
                          f"outside it")
    if not directory.exists():
        return "new"
    if not directory.is_dir():
        raise ExportError(f"cannot export to {directory}: it is a file, not a directory; choose another path")
    entries = sorted(p.name for p in directory.iterdir())
    if not entries:
        return "empty"
    if overwrite:
        reason = _protected(directory)
        if reason is not None:
            raise ExportError(f"refusing to replace {directory} whole (overwrite=True / --force): {reason}. Export into a "
                              f"new subdirectory instead, e.g. {directory / 'qcompiler-export'}")
        return "replace"
    previous = previous_export_files(directory)
    if previous is not None:
        clash = sorted(set(names) & set(entries) - set(previous))
        if clash:
            raise ExportError(f"cannot export to {directory}: it holds a previous export, and also {', '.join(clash)}, "
                              f"which that export did not write and this one would replace. Move them away, or replace the "
                              f"directory whole with overwrite=True (--force on the command line)")
        return "previous"
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise ExportError(f"cannot export to {directory}: it holds files qcompiler did not write ({shown}). Export into a "
                      f"new or empty directory, or replace the directory whole with overwrite=True (--force on the "
                      f"command line)")


def _write_all(staging: Path, files: dict[str, Callable[[Path], None]]) -> None:
    for name, write in files.items():
        write(staging / name)


def _replace_in_place(directory: Path, files: dict[str, Callable[[Path], None]]) -> None:
    """Write ``files`` into a hidden folder inside ``directory``, then swap them in for the
    previous export's files; on any failure the previous files are put back."""
    old = previous_export_files(directory) or []
    staging = Path(tempfile.mkdtemp(prefix=".qcompiler-export-", dir=directory))
    moved: list[tuple[Path, Path]] = []  # (from, to), to undo in reverse
    try:
        _write_all(staging, files)
        backup = staging / ".previous"
        backup.mkdir()
        for name in sorted(set(old) | set(files)):
            target = directory / name
            if target.is_file() or target.is_symlink():
                os.replace(target, backup / name)
                moved.append((target, backup / name))
        for name in files:
            os.replace(staging / name, directory / name)
            moved.append((staging / name, directory / name))
    except BaseException:
        for source, dest in reversed(moved):
            try:
                os.replace(dest, source)
            except OSError:
                pass
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_whole(directory: Path, files: dict[str, Callable[[Path], None]], kind: str) -> None:
    """Write ``files`` into a hidden sibling of ``directory`` and rename it into place
    (after moving the old directory aside, for ``kind == 'replace'``)."""
    parent = directory.parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.qcompiler-", dir=parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; a directory made for the user follows the umask
        _write_all(staging, files)
        if kind == "replace":
            os.chmod(staging, directory.stat().st_mode & 0o7777)  # the replaced directory's own mode
            backup = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=parent))
            os.replace(directory, backup / "old")
            try:
                os.replace(staging, directory)
            except BaseException:
                os.replace(backup / "old", directory)
                raise
            finally:
                shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, directory)
        staging = None
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for p in created:  # parents this export made, innermost first
            try:
                p.rmdir()
            except OSError:
                break
        raise


def resolve_destination(directory: str | os.PathLike, overwrite: bool = False,
                        names: tuple[str, ...] = ()) -> Path:
    """``directory`` as an absolute path, checked as ``write_export`` will check it (so a
    command line can refuse a destination before compiling); ExportError otherwise."""
    if not str(directory).strip():
        raise ExportError("the export directory is an empty path: name a directory, e.g. out/")
    path = Path(directory).expanduser().resolve()
    _check_destination(path, overwrite, [*names, MANIFEST])
    return path


def write_export(directory: str | os.PathLike, files: dict[str, Callable[[Path], None]],
                 manifest: dict[str, Any], overwrite: bool = False) -> Path:
    """Write ``files`` (name → function writing that file at the path it is given) and
    ``manifest.json`` (``manifest`` plus the format and the list of files) into
    ``directory``, by the rules in this module's docstring. Returns the directory's
    absolute path. Raises ExportError naming the directory and the fix."""
    directory = resolve_destination(directory, overwrite, tuple(files))
    names = [*files, MANIFEST]
    kind = _check_destination(directory, overwrite, names)
    full_manifest = {"format": FORMAT, "version": FORMAT_VERSION, **manifest, "files": names}
    everything = {**files, MANIFEST: lambda path: path.write_text(json.dumps(full_manifest, indent=1))}
    try:
        if kind in ("new", "replace"):
            _replace_whole(directory, everything, kind)
        else:
            _replace_in_place(directory, everything)
    except OSError as exc:
        raise ExportError(f"cannot export to {directory}: {exc.strerror or exc} (choose a writable directory)") from exc
    return directory


def read_manifest(directory: str | os.PathLike) -> tuple[Path, dict]:
    """The export ``directory`` (absolute) and its manifest; ExportError if it holds none."""
    directory = Path(directory).expanduser().resolve()
    path = directory / MANIFEST
    if not directory.exists():
        raise ExportError(f"{directory} does not exist: give the directory cm.export(dir) wrote")
    if not directory.is_dir():
        raise ExportError(f"{directory} is a file, not an export directory: give the directory cm.export(dir) wrote "
                          f"(the one holding {MANIFEST}), e.g. {directory.parent}")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{directory} holds no qcompiler export (no {MANIFEST}); export one with cm.export(dir)") from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}. The export is damaged: export it again with cm.export(dir)") from exc
    if previous_export_files(directory) is None:
        raise ExportError(f"{path} is not a qcompiler manifest (no 'format': '{FORMAT}'); export again with cm.export(dir)")
    missing = [k for k in ("target", "library", "inputs") if k not in manifest]
    if missing or not isinstance(manifest.get("inputs"), list):
        raise ExportError(f"{path} lacks {', '.join(missing) or 'a list of inputs'}: the export is damaged or from "
                          f"another tool. Fix: export it again with cm.export(dir)")
    return directory, manifest
