"""The output directory of a job: ownership, one run at a time, atomic publication.

Layout of ``OUT`` (the job's ``--out``)::

    OUT/.poisonguard              marker: poisonguard owns OUT (JSON: the job that writes here)
    OUT/.poisonguard.lock         lock file: held (``flock``) by the run writing here
    OUT/.poisonguard-runs/000007  the outputs of one published run (cleaned/, ..., report.json)
    OUT/.poisonguard-runs/staging-*   a run in progress (or a dead run's, removed by the next run)
    OUT/.current  -> .poisonguard-runs/000007   the published run
    OUT/cleaned   -> .current/cleaned           one link per output, created once
    OUT/report.json -> .current/report.json

Readers open ``OUT/cleaned``, ``OUT/report.json`` and so on as before; through the links
they always see one complete run. A run writes into its staging directory, renames it to
the next version number, and then replaces ``.current`` by a new link with one
``rename``: before that rename the previous run is current, after it the new one, and at
no moment a mix. The previous version is kept until the next publication (a reader that
opened it keeps working); older ones are removed then.

Safety rules, checked before anything is written:

* ``OUT`` must not overlap an input (be one, lie inside one, or contain one);
* ``OUT`` must be new, empty, or marked by an earlier run of the same job: poisonguard
  never deletes or replaces anything it did not write;
* one run at a time: the lock is an ``flock`` on ``OUT/.poisonguard.lock``, which the
  kernel releases when the process dies, so a killed run never blocks the next one. The
  next run removes what a dead run left in ``.poisonguard-runs`` (its staging directory,
  a version it had not made current).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import re
import shutil
import tempfile

from ..schemas import ConfigError, PoisonguardError

MARKER = ".poisonguard"
LOCK = ".poisonguard.lock"
RUNS = ".poisonguard-runs"
CURRENT = ".current"
STAGING_PREFIX = "staging-"
_TMP_LINK = ".poisonguard-link-"
_VERSION = re.compile(r"^\d{6,}$")
FORMAT = 1


def _inside(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies below it (both already resolved)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_separate(out: str, inputs, files=()) -> None:
    """Refuse an ``out`` that overlaps an input: equal to one, inside one, or containing one.

    ``inputs`` are the paths as the user gave them (files, directories or glob patterns);
    ``files`` the files they expanded to. Symbolic links are resolved first. A glob pattern
    counts by the files it matched and by its fixed leading directory, if that is ``out``
    or inside it.
    """
    real_out = os.path.realpath(out)
    for arg in inputs:
        if glob.has_magic(arg):
            root = _fixed_root(arg)
            if _inside(os.path.realpath(root), real_out):
                _overlap(out, arg, "the input lies inside the output directory")
            for path in glob.glob(arg, recursive=True):
                if _inside(os.path.realpath(path), real_out):
                    _overlap(out, arg, f"it matches '{path}' inside the output directory")
            continue
        real = os.path.realpath(arg)
        if _inside(real, real_out):
            _overlap(out, arg, "the input is the output directory" if real == real_out else "the input lies inside the output directory")
        if os.path.isdir(arg) and _inside(real_out, real):
            _overlap(out, arg, "the output directory would lie inside the input directory")
    for path in files:
        if _inside(os.path.realpath(path), real_out):
            _overlap(out, path, "the input file lies inside the output directory")


def _overlap(out: str, arg: str, why: str) -> None:
    raise ConfigError(f"--out '{out}' overlaps input '{arg}' ({why}); choose an output directory apart from the inputs")


def _fixed_root(pattern: str) -> str:
    root = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            break
        root.append(part)
    return os.sep.join(root) or "."


class OutputDir:
    """One run's hold on ``out``: use as a context manager around the job.

    Entering checks that ``out`` is apart from the inputs and owned (or new), takes the
    lock, removes what dead runs left, and makes :attr:`staging`. :meth:`publish` makes
    the staged outputs current. Leaving releases the lock; after a failure it removes the
    staging directory, and, if this run claimed ``out``, everything it created there.
    """

    def __init__(self, out: str, job: str, outputs, inputs=(), files=()):
        self.out = out
        self.job = job
        self.outputs = tuple(outputs)
        self.inputs = tuple(inputs)
        self.files = tuple(files)
        self.staging: str | None = None
        self._lock_fd: int | None = None
        self._created_dir = False
        self._claimed = False

    # -- entering ---------------------------------------------------------------------------
    def __enter__(self) -> OutputDir:
        check_separate(self.out, self.inputs, self.files)
        self._check_owner()
        if not os.path.isdir(self.out):
            try:
                os.makedirs(self.out)
                self._created_dir = True
            except FileExistsError:  # made by a concurrent run since the check: the lock decides
                pass
            except OSError as exc:
                raise ConfigError(f"--out '{self.out}': cannot create the directory: {exc.strerror}") from None
        try:
            self._lock()
            self._claim()
            self._remove_leftovers()
            runs = os.path.join(self.out, RUNS)
            os.makedirs(runs, exist_ok=True)
            self.staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=runs)
        except BaseException:
            self._undo()
            raise
        return self

    def _check_owner(self) -> None:
        if os.path.lexists(self.out) and not os.path.isdir(self.out):
            raise ConfigError(f"--out '{self.out}' is a file; expected a directory")
        if not os.path.isdir(self.out):
            return
        entries = set(os.listdir(self.out))
        if MARKER in entries:
            owner = self._read_marker()
            if owner.get("job") != self.job:
                raise ConfigError(f"--out '{self.out}' holds the outputs of 'poisonguard {owner.get('job')}'; "
                                  f"choose another directory for '{self.job}'")
            for name in self.outputs:
                path = os.path.join(self.out, name)
                if os.path.lexists(path) and not (os.path.islink(path) and os.readlink(path) == self._link_target(name)):
                    raise ConfigError(f"--out '{self.out}': '{name}' was not written by poisonguard (expected a link to "
                                      f"{self._link_target(name)}); move it away, poisonguard does not replace it")
        elif entries - {LOCK}:
            raise ConfigError(f"--out '{self.out}' is not empty and has no {MARKER} marker of an earlier poisonguard run; "
                              "choose a new or empty directory (poisonguard deletes nothing it did not write)")

    def _read_marker(self) -> dict:
        path = os.path.join(self.out, MARKER)
        try:
            with open(path, encoding="utf-8") as fh:
                owner = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable poisonguard marker ({exc}); remove the directory or choose another --out") from None
        if not isinstance(owner, dict) or owner.get("written_by") != "poisonguard":
            raise ConfigError(f"{path}: not a poisonguard marker; choose another --out")
        return owner

    def _lock(self) -> None:
        path = os.path.join(self.out, LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_pid(path)
            raise PoisonguardError(f"--out '{self.out}': another poisonguard run{f' (pid {holder})' if holder else ''} is "
                                   f"writing there (lock {path}); wait for it to finish or choose another directory") from None
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    def _claim(self) -> None:
        """Under the lock: mark ``out`` as ours, unless an earlier run did (rechecked: a run may have claimed it meanwhile)."""
        self._check_owner()
        if os.path.exists(os.path.join(self.out, MARKER)):
            return
        tmp = os.path.join(self.out, f"{MARKER}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"written_by": "poisonguard", "job": self.job, "format": FORMAT}, fh)
            fh.write("\n")
        os.replace(tmp, os.path.join(self.out, MARKER))
        self._claimed = True

    def _remove_leftovers(self) -> None:
        """Under the lock, so no live run owns them: dead runs' staging directories and half-made links."""
        runs = os.path.join(self.out, RUNS)
        if os.path.isdir(runs):
            for name in os.listdir(runs):
                if name.startswith(STAGING_PREFIX):
                    shutil.rmtree(os.path.join(runs, name), ignore_errors=True)
        for name in os.listdir(self.out):
            if name.startswith(_TMP_LINK) and os.path.islink(os.path.join(self.out, name)):
                os.unlink(os.path.join(self.out, name))

    # -- publishing -------------------------------------------------------------------------
    def _link_target(self, name: str) -> str:
        return os.path.join(CURRENT, name)

    def versions(self) -> list[str]:
        runs = os.path.join(self.out, RUNS)
        return sorted((n for n in os.listdir(runs) if _VERSION.match(n)), key=int) if os.path.isdir(runs) else []

    def current(self) -> str | None:
        """The published version's name (None before the first publication)."""
        link = os.path.join(self.out, CURRENT)
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def publish(self) -> str:
        """Make the staged outputs current; return the version's path.

        Every output named at construction must exist in :attr:`staging`. Steps: rename
        the staging directory to the next version; make sure each output's link exists;
        swap ``.current`` with one rename; remove versions older than the one replaced.
        """
        for name in self.outputs:
            if not os.path.lexists(os.path.join(self.staging, name)):
                raise PoisonguardError(f"internal error: the run staged no '{name}'; nothing was published")
        versions = self.versions()
        number = int(versions[-1]) + 1 if versions else 1
        version = f"{number:06d}"
        final = os.path.join(self.out, RUNS, version)
        os.rename(self.staging, final)
        self.staging = None
        for name in self.outputs:
            link = os.path.join(self.out, name)
            if not os.path.islink(link):
                self._swap_link(link, self._link_target(name))
        previous = self.current()
        self._swap_link(os.path.join(self.out, CURRENT), os.path.join(RUNS, version))
        self._claimed = False  # published: from now on, out is the user's result
        for old in self.versions():
            if old not in (version, previous):
                shutil.rmtree(os.path.join(self.out, RUNS, old), ignore_errors=True)
        return final

    def _swap_link(self, link: str, target: str) -> None:
        tmp = os.path.join(self.out, f"{_TMP_LINK}{os.getpid()}")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)

    # -- leaving ----------------------------------------------------------------------------
    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.staging is not None:  # failed, or left without publishing
            self._undo()
        else:
            self._release()

    def _undo(self) -> None:
        """Unpublished: remove this run's staging directory, and what a first run created in ``out``."""
        try:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging = None
            if self._claimed:
                runs = os.path.join(self.out, RUNS)
                if os.path.isdir(runs) and not os.listdir(runs):
                    os.rmdir(runs)
                if not os.path.lexists(os.path.join(self.out, RUNS)):
                    os.remove(os.path.join(self.out, MARKER))
                    if self._lock_fd is not None:
                        os.remove(os.path.join(self.out, LOCK))
        finally:
            self._release()
            if self._created_dir and os.path.isdir(self.out) and not os.listdir(self.out):
                os.rmdir(self.out)

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None


def _read_pid(path: str) -> str:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return text if text.isdigit() else ""
