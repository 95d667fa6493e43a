"""Fault injection for publication, run as a child process by tests/test_outdir.py.

    python tests/publish_fault.py kill K cli ARGS...    # the CLI, os._exit(77) just before
                                                       # the K-th file-system change in publish
    python tests/publish_fault.py kill K fake OUT TAG   # the same around a publication of small
                                                       # files holding TAG (no pipeline)
    python tests/publish_fault.py hold cli ARGS...      # the CLI, stopping at the start of publish:
                                                       # prints "publishing" and waits for a line on stdin
    python tests/publish_fault.py stall cli ARGS...     # screen, stopping inside the pipeline (writing the
                                                       # first chunk): prints "screening", waits likewise

Every os.rename/replace/symlink/unlink/remove/rmdir and shutil.rmtree call made while
``OutputDir.publish`` runs counts as one change, so killing before the K-th for K = 1, 2, ...
stops the process at every point of publication, including inside the removal of old
versions.
"""

from __future__ import annotations

import os
import shutil
import sys

from poisonguard.pipelines import outdir

FAKE_OUTPUTS = ("cleaned", "quarantine", "report.json")
KILLED = 77


def _instrument(kill_at: int | None, hold: bool) -> None:
    state = {"on": False, "n": 0}

    def guard(fn):
        def wrapped(*args, **kwargs):
            if state["on"]:
                state["n"] += 1
                if state["n"] == kill_at:
                    os._exit(KILLED)
            return fn(*args, **kwargs)
        return wrapped

    for name in ("rename", "replace", "symlink", "unlink", "remove", "rmdir"):
        setattr(os, name, guard(getattr(os, name)))
    shutil.rmtree = guard(shutil.rmtree)
    real_publish = outdir.OutputDir.publish

    def publish(self):
        if hold:
            print("publishing", flush=True)
            sys.stdin.readline()
        state["on"] = True
        try:
            return real_publish(self)
        finally:
            state["on"] = False

    outdir.OutputDir.publish = publish


def _stall_in_pipeline() -> None:
    from poisonguard.pipelines import cli

    cli._configure_logging(quiet=True, debug=False)  # as main() does before Beam loads
    from poisonguard.pipelines import screen

    real = screen.write_screened

    def write_screened(chunk, staging):
        print("screening", flush=True)
        sys.stdin.readline()
        return real(chunk, staging)

    screen.write_screened = write_screened


def fake_publish(out: str, tag: str) -> None:
    """Publish two directories and a report, each file holding ``tag``."""
    with outdir.OutputDir(out, "screen", FAKE_OUTPUTS) as od:
        for name in FAKE_OUTPUTS[:2]:
            os.makedirs(os.path.join(od.staging, name))
            for i in range(3):
                with open(os.path.join(od.staging, name, f"part-{i}"), "w") as fh:
                    fh.write(tag)
        with open(os.path.join(od.staging, "report.json"), "w") as fh:
            fh.write(tag)
        od.publish()


def published_tag(out: str) -> str | None:
    """The tag every published file holds (None: nothing published); AssertionError on a mix."""
    tags = set()
    present = [os.path.exists(os.path.join(out, name)) for name in FAKE_OUTPUTS]
    if not any(present):
        return None
    assert all(present), f"some outputs are missing: {dict(zip(FAKE_OUTPUTS, present))}"
    for name in FAKE_OUTPUTS[:2]:
        parts = sorted(os.listdir(os.path.join(out, name)))
        assert parts == ["part-0", "part-1", "part-2"], parts
        for part in parts:
            with open(os.path.join(out, name, part)) as fh:
                tags.add(fh.read())
    with open(os.path.join(out, "report.json")) as fh:
        tags.add(fh.read())
    assert len(tags) == 1, f"a mix of runs is published: {sorted(tags)}"
    return tags.pop()


def main(argv: list[str]) -> int:
    mode, rest = argv[0], argv[1:]
    if mode == "stall":
        _stall_in_pipeline()
    kill_at = None
    if mode == "kill":
        kill_at, rest = int(rest[0]), rest[1:]
    _instrument(kill_at, hold=(mode == "hold"))
    if rest[0] == "fake":
        fake_publish(rest[1], rest[2])
        return 0
    from poisonguard.pipelines.cli import main as cli_main

    return cli_main(rest[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
