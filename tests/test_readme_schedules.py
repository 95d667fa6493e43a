"""The README's scheduling snippets (issue 12, item 6) are checked, not run: the job file validates against the job
schema, the cron line has five valid time fields and a command the CLI parses, and the Airflow DAG compiles and its
two poisonguard calls parse (Airflow itself is not installed, and need not be)."""

from __future__ import annotations

import ast
import os
import re
import shlex

import pytest

from poisonguard.pipelines.cli import _Parser, build_parser
from poisonguard.pipelines.jobs import screen_argv_for_job

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
DATE = "2026-11-28"
#: cron's five fields: minute, hour, day of month, month, day of week (names allowed for the last two)
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
NAMES = {3: "jan feb mar apr may jun jul aug sep oct nov dec".split(), 4: "sun mon tue wed thu fri sat".split()}


def _blocks(lang: str) -> list[str]:
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def _one(lang: str, marker: str) -> str:
    found = [b for b in _blocks(lang) if marker in b]
    assert len(found) == 1, f"expected one ```{lang} block with {marker!r} in README.md, found {len(found)}"
    return found[0]


@pytest.fixture
def job_file(tmp_path):
    """The README's job file, as a file."""
    path = tmp_path / "nightly.yaml"
    path.write_text(_one("yaml", "# nightly.yaml"))
    return str(path)


def _check_run(argv: list[str], job_file: str, capsys) -> None:
    """``poisonguard run JOB ...`` arguments: the job (the README's) loads and validates, and the screen command line it
    becomes parses with the CLI's own parser."""
    assert argv[0] == "run" and argv[1].endswith("nightly.yaml"), argv
    capsys.readouterr()
    assert screen_argv_for_job([job_file, *argv[2:], "--show"], build_parser(), _Parser) == 0
    shown = shlex.split(capsys.readouterr().out.strip())
    args = build_parser().parse_args(shown[1:])
    assert args.command == "screen" and args.out.endswith(DATE), args.out
    assert args.inputs == [f"/data/landing/dt={DATE}/*.parquet"] and args.history and args.reference


def _cron_field(field: str, index: int) -> bool:
    lo, hi = CRON_RANGES[index]
    for part in field.lower().split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) >= 1):
            return False
        if base == "*":
            continue
        ends = base.split("-")
        if len(ends) > 2:
            return False
        for end in ends:
            value = NAMES[index].index(end) + (1 if index == 3 else 0) if end in NAMES.get(index, []) else (
                int(end) if end.isdigit() else None)
            if value is None or not lo <= value <= hi:
                return False
    return True


def test_readme_job_file_validates(job_file, capsys):
    _check_run(["run", job_file, "--date", DATE], job_file, capsys)


def test_cron_line(job_file, capsys):
    lines = [line for line in _one("cron", "poisonguard").splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert len(fields) == 6
    for i, field in enumerate(fields[:5]):
        assert _cron_field(field, i), f"cron field {i + 1} {field!r}"
    assert not re.search(r"(?<!\\)%", fields[5]), "an unescaped % ends a cron command"
    tokens = shlex.split(fields[5].replace("\\%", "%"))
    cut = next((i for i, t in enumerate(tokens) if t in (">", ">>", "2>&1", "|", "&&", ";")), len(tokens))
    tokens = tokens[:cut]
    assert os.path.basename(tokens[0]) == "poisonguard"
    subst = [t for t in tokens if t.startswith("$(")]
    assert subst == ["$(date -u -d yesterday +%F)"]  # %F is YYYY-MM-DD, what --date takes
    _check_run([DATE if t.startswith("$(") else t for t in tokens[1:]], job_file, capsys)


def test_airflow_dag(job_file, capsys):
    source = _one("python", "airflow")
    tree = ast.parse(source)
    compile(tree, "README.md (Airflow DAG)", "exec")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    bash = [n for n in calls if getattr(n.func, "id", None) == "BashOperator"]
    assert len(bash) == 1
    command = next(k.value.value for k in bash[0].keywords if k.arg == "bash_command")
    tokens = shlex.split(command.replace("{{ ds }}", DATE))
    assert tokens[0] == "poisonguard"
    _check_run(tokens[1:], job_file, capsys)
    main = [n for n in calls if getattr(n.func, "id", None) == "main"]
    assert len(main) == 1
    argv = [DATE if isinstance(e, ast.Name) and e.id == "ds" else ast.literal_eval(e) for e in main[0].args[0].elts]
    _check_run(argv, job_file, capsys)
    decorated = {getattr(d, "id", getattr(getattr(d, "func", None), "id", None)) for n in ast.walk(tree)
                 if isinstance(n, ast.FunctionDef) for d in n.decorator_list}
    assert {"dag", "task"} <= decorated
