"""The ``poisonguard`` command line: ``screen``, ``fit``, ``run`` (a job file), ``history``, ``simulate``, ``attacks`` and ``demo``.

Exit codes: 0 the batch was accepted (or the simulation done), 1 it breached the policy, 2 a usage, config or input error
(printed as one line naming the file, column or option; ``--debug`` shows the traceback).
Beam pipeline options go after ``--`` and pass through to Beam unchanged.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_OK, EXIT_BREACHED, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text}")
    return value


def _integer_at_least(minimum: int, what: str, name: str):
    """An argparse type for integers >= ``minimum``, described as ``what`` in its errors. ``name`` is its
    ``__name__``, which the job-file schema (``jobs.py``) reads to know the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = parse.__qualname__ = name
    return parse


_positive_int = _integer_at_least(1, "a positive integer", "_positive_int")
_count = _integer_at_least(0, "a non-negative integer", "_count")


def _nonnegative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _columns(text: str) -> tuple[str, ...]:
    cols = tuple(c.strip() for c in text.split(",") if c.strip())
    if not cols:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return cols


def _texts(text: str) -> tuple[str, ...]:
    values = tuple(v for v in text.split(",") if v != "")
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list of cell texts")
    return values


def _add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--na-values", type=_texts, default=(), metavar="A,B",
                   help="CSV cell texts that mean a missing value, e.g. NA,null (default: only empty cells; "
                        "NA, null or nan are kept as text)")
    p.add_argument("--allow-duplicate-ids", action="store_true",
                   help="with --id-column: accept ids that repeat and count them in the report (default: an error)")


def _add_runner_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--runner", choices=("direct", "dask"), default="direct",
                   help="direct: Beam's in-process runner (default); dask: Beam's DaskRunner on a dask.distributed cluster")
    g.add_argument("--dask-address", metavar="HOST:PORT", help="scheduler of an existing Dask cluster (default: start a local one)")
    g.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="worker processes: local Dask workers, or direct-runner processes (default 1: in this process)")
    g.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                   help="BLAS/numba threads per worker (default 1; more threads on a busy machine run slower)")
    g.add_argument("--batch-rows", type=_positive_int, default=65536, metavar="N", help="rows per chunk (default 65536)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")
    g.add_argument("--debug", action="store_true", help="show tracebacks and the libraries' own logs")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="poisonguard", description="Simulate data-poisoning attacks and screen data for poisoned rows.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("screen", help="screen a batch: write cleaned/, quarantine/, invalid/ and report.json",
                       description="Screen CSV/Parquet inputs for poisoned rows. Exit code 0: accepted; 1: the batch "
                                   "breached the policy; 2: usage or input error. Beam options go after '--'.")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="CSV or Parquet files, directories or glob patterns")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory")
    s.add_argument("--label-column", default="label", metavar="NAME", help="class label column (default: label)")
    s.add_argument("--id-column", metavar="NAME", help="unique row id column (default: derived from file and row offset)")
    s.add_argument("--feature-columns", type=_columns, metavar="A,B,C", help="feature columns (default: every numeric column)")
    s.add_argument("--detectors", type=_columns, default=None, metavar="A,B",
                   help="detectors to run, comma-separated: spectral, robust_spectral, influence, clustering, knn, label, "
                        "pattern, novelty (needs --reference) (default: spectral,label,pattern, and novelty with --reference); they "
                        "combine on one p-value scale (see --alpha)")
    s.add_argument("--alpha", type=_fraction, default=0.01, metavar="F",
                   help="false-discovery level of the default per-class Benjamini-Hochberg decision (default 0.01): "
                        "a clean class loses nothing with probability at least 1 - F")
    s.add_argument("--contamination", type=_fraction, metavar="F",
                   help="flag this fraction of all rows, most suspicious first (default: per-class Benjamini-Hochberg)")
    s.add_argument("--reference", action="append", default=[], metavar="PATH",
                   help="trusted clean rows (repeatable): the decision layer fits each class's null on them "
                        "instead of on the batch")
    s.add_argument("--target-fpr", type=_fraction, default=None, metavar="F",
                   help="with --reference: instead of Benjamini-Hochberg, one cut that flags at most this share of "
                        "the reference rows")
    s.add_argument("--history", metavar="PATH",
                   help="an SQLite run history (created if new): compare this run with the last runs in it (drift), "
                        "then append its record; read it with 'poisonguard history' or SQL")
    pol = s.add_argument_group("policy (exit code 1 when breached)")
    pol.add_argument("--max-flagged-fraction", type=_fraction, default=0.01, metavar="F",
                     help="breach when more rows than this are flagged (default 0.01, twice the decision layer's "
                          "clean-row bound; 0: any flagged row)")
    pol.add_argument("--max-invalid-fraction", type=_fraction, default=1.0, metavar="F",
                     help="breach when more rows than this are invalid (default 1: never)")
    pol.add_argument("--min-valid-rows", type=_count, default=1, metavar="N",
                     help="breach when fewer rows than this are valid (default 1: an empty or fully invalid batch "
                          "breaches; 0: never)")
    pol.add_argument("--on-drift", choices=("breach", "report"), default="breach",
                     help="with --history, what a drift alarm does: breach (default) or report only")
    pol.add_argument("--drift-window", type=_positive_int, default=20, metavar="N",
                     help="compare with the last N runs that had the same detectors (default 20)")
    pol.add_argument("--drift-min-runs", type=_positive_int, default=5, metavar="N",
                     help="judge drift only with at least N such runs (default 5)")
    pol.add_argument("--drift-k", type=_nonnegative, default=5.0, metavar="K",
                     help="a metric rings above the runs' median by more than K robust spreads (default 5)")
    pol.add_argument("--drift-floor", type=_fraction, default=0.005, metavar="F",
                     help="... and by at least F for a flagged share (default 0.005: half a percentage point)")
    pol.add_argument("--drift-score-floor", type=_nonnegative, default=1.0, metavar="S",
                     help="... and by at least S for the 99th percentile of suspicion (default 1: p-values ten times "
                          "smaller)")
    _add_input_options(s)
    from .images import add_image_options

    add_image_options(s)
    v = s.add_argument_group("validation (Great Expectations)")
    v.add_argument("--expectations", metavar="SUITE.json",
                   help="a Great Expectations suite (its own JSON) to validate the rows against, applied as written "
                        "(default: a suite built from the data contract, and from the --reference rows' ranges, null "
                        "rates, means and classes; written to DIR/expectations.json)")
    v.add_argument("--on-failed-expectation", choices=("quarantine", "breach", "report"), default="report",
                   help="report (default): failures are only recorded (report, failed_expectations column, verdict); "
                        "quarantine: valid rows failing a row-level expectation go to quarantine/, a failed "
                        "dataset-level expectation breaches the batch; breach: any failed expectation breaches the batch")
    v.add_argument("--no-validation", action="store_true", help="skip the validation stage")
    s.add_argument("--model", metavar="MODEL_DIR",
                   help="a model directory from 'poisonguard fit': score and decide against it in one read of the inputs, "
                        "no refit (its detectors, cut and validation suite; --expectations still replaces the suite)")
    _add_runner_options(s)

    f = sub.add_parser("fit", help="fit the detectors, the decision layer and the validation suite on trusted rows: write MODEL_DIR",
                       description="Fit on trusted clean rows and write a model directory (JSON, .npz arrays, the Great "
                                   "Expectations suite; no pickle) for 'poisonguard screen --model'. Exit code 0: done; 2: "
                                   "usage or input error. Beam options go after '--'.")
    f.add_argument("inputs", nargs="+", metavar="REFERENCE", help="trusted CSV or Parquet files, directories or glob patterns")
    f.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    f.add_argument("--label-column", default="label", metavar="NAME", help="class label column (default: label)")
    f.add_argument("--id-column", metavar="NAME", help="unique row id column (default: derived from file and row offset)")
    f.add_argument("--feature-columns", type=_columns, metavar="A,B,C", help="feature columns (default: every numeric column)")
    f.add_argument("--detectors", type=_columns, default=None, metavar="A,B",
                   help="detectors to fit, comma-separated: spectral, robust_spectral, influence, clustering, knn, label "
                        "(default: spectral,influence,label; novelty and pattern need each batch and cannot be saved)")
    f.add_argument("--target-fpr", type=_fraction, default=0.001, metavar="F",
                   help="the saved cut flags at most this share of the trusted rows (default 0.001)")
    f.add_argument("--no-validation", action="store_true", help="save no validation suite")
    _add_input_options(f)
    _add_runner_options(f)

    d = sub.add_parser("demo", help="plant a backdoor in bundled real data, screen it, print what was caught",
                       description="Build a poisoned copy of scikit-learn's breast-cancer data, screen it and print a summary.")
    d.add_argument("--out", default="poisonguard-demo", metavar="DIR", help="output directory (default: ./poisonguard-demo)")
    _add_runner_options(d)

    m = sub.add_parser("simulate", help="poison a clean dataset: write data/, invalid/ and manifest.json",
                       description="Apply the attacks of a YAML config, in order, to CSV/Parquet inputs. Writes DIR/data/ "
                                   "(the rows with ground-truth columns poisoned, attack, original_label), DIR/invalid/ and "
                                   "DIR/manifest.json. Exit code 0: done; 2: usage, config or input error. Beam options "
                                   "go after '--'. 'poisonguard attacks' lists the attack kinds and their parameters.")
    m.add_argument("inputs", nargs="+", metavar="INPUT", help="CSV or Parquet files, directories or glob patterns")
    m.add_argument("--config", required=True, metavar="FILE", help="attack config (YAML; schema: schemas/attack_config.schema.json)")
    m.add_argument("--out", required=True, metavar="DIR", help="output directory")
    m.add_argument("--seed", type=_integer, metavar="N", help="key of the row-selection hashes (default: the config's seed)")
    m.add_argument("--label-column", default="label", metavar="NAME", help="class label column (default: label)")
    m.add_argument("--id-column", metavar="NAME", help="unique row id column (default: derived from file and row offset)")
    m.add_argument("--feature-columns", type=_columns, metavar="A,B,C", help="feature columns (default: every numeric column)")
    _add_input_options(m)
    from .images import add_image_options

    add_image_options(m, representation=False)
    _add_runner_options(m)

    h = sub.add_parser("history", help="print the recent runs of a run history (screen --history)",
                       description="Print the last runs recorded in a history store (SQLite), oldest first: counts, "
                                   "flagged share, estimated poison rate, expectation pass rate, suspicion p99, verdict "
                                   "and drift. The store is plain SQLite: query it with SQL (README, 'History and drift').")
    h.add_argument("--history", required=True, metavar="PATH", help="the history file")
    h.add_argument("--last", type=_positive_int, default=20, metavar="N", help="how many runs (default 20)")
    h.add_argument("--json", action="store_true", help="print the runs as JSON (with their classes and detectors)")

    sub.add_parser("run", help="run a screening job file: poisonguard run JOB.yaml [--date D] [--set KEY=VALUE]",
                   description="see poisonguard run --help", add_help=False)  # handled by pipelines.jobs (see main)

    sub.add_parser("attacks", help="list the attack kinds and their parameters",
                   description="Print every attack kind a simulate config can name, with its parameters "
                               "(type, default, meaning).")
    return parser


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _split_beam_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _pin_threads(n: int) -> None:
    # Set before numpy/numba load so worker processes started from here inherit them too.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def _configure_logging(quiet: bool, debug: bool) -> None:
    """Progress from poisonguard on stderr; other libraries only for errors (all with --debug)."""
    ours = logging.getLogger("poisonguard")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("poisonguard: %(message)s"))
    ours.handlers[:] = [handler]
    ours.propagate = False
    ours.setLevel(logging.WARNING if quiet else (logging.DEBUG if debug else logging.INFO))
    root = logging.getLogger()
    # A root handler of our own, installed before Beam and Dask load, keeps their import-time
    # warnings and INFO chatter (which they send to the root logger) off the terminal.
    root.handlers[:] = [logging.StreamHandler(sys.stderr) if debug else logging.NullHandler()]
    root.setLevel(logging.DEBUG if debug else logging.ERROR)
    if not debug:
        import warnings

        warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, beam_args = _split_beam_args(argv)
    parser = build_parser()
    if own[:1] == ["run"]:  # a job file: becomes a screen command line (pipelines.jobs)
        job = _job_argv(own[1:], parser, beam_args)
        if isinstance(job, int):
            return job
        own, beam_args = job
    try:
        args = parser.parse_args(own)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.version:
        from .. import __version__

        print(f"poisonguard {__version__}")
        return EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    if beam_args and args.command not in ("screen", "simulate", "fit"):
        print(f"poisonguard: error: '{args.command}' takes no Beam options after '--'", file=sys.stderr)
        return EXIT_ERROR
    if args.command == "attacks":
        print(describe_attacks())
        return EXIT_OK
    if args.command == "history":
        return _history(args)

    _pin_threads(args.threads)
    _configure_logging(args.quiet, args.debug)

    from ..schemas import PoisonguardError

    with _InterruptWatch() as watch:
        try:
            return _run(args, beam_args)
        except PoisonguardError as exc:
            if args.debug:
                raise
            print(f"poisonguard: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            return _interrupted()
        except Exception as exc:  # a failure inside the pipeline: report it in one line
            if watch.interrupted and not args.debug:  # Beam re-raises Ctrl-C as RuntimeError('KeyboardInterrupt')
                return _interrupted()
            if args.debug:
                raise
            print(f"poisonguard: error: {_one_line(exc)} (run with --debug for the traceback)", file=sys.stderr)
            return EXIT_ERROR


def _job_argv(argv: list[str], parser, beam_args):
    from ..schemas import PoisonguardError
    from .jobs import screen_argv_for_job

    try:
        return screen_argv_for_job(argv, parser, _Parser, beam_args)
    except SystemExit as exc:
        return int(exc.code or 0)
    except PoisonguardError as exc:
        print(f"poisonguard: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _interrupted() -> int:
    print("poisonguard: interrupted; the previous outputs are as they were", file=sys.stderr)
    return EXIT_INTERRUPTED


class _InterruptWatch:
    """Notes a Ctrl-C (SIGINT) during the run, then raises KeyboardInterrupt as Python does.

    Beam catches the KeyboardInterrupt inside its runner and raises another exception
    instead; the note lets :func:`main` still exit 130 with one line. Outside the main
    thread (no signal handlers there) it only watches nothing.
    """

    def __init__(self):
        self.interrupted = False
        self._previous = None

    def _on_sigint(self, signum, frame):
        self.interrupted = True
        runners = sys.modules.get("poisonguard.pipelines.runners")
        if runners is not None:  # loaded once a pipeline runs: it then keeps the workers' tracebacks back
            runners.INTERRUPTED.set()
        raise KeyboardInterrupt

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _one_line(exc: BaseException) -> str:
    # Beam wraps worker exceptions; the innermost line that names our error is the useful one.
    text = str(exc)
    for line in reversed(text.splitlines()):
        if "InputError:" in line or "ConfigError:" in line or "PoisonguardError:" in line:
            return line.split("Error:", 1)[1].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip()


def _runner_config(args, beam_args):
    from .runners import RunnerConfig

    return RunnerConfig(runner=args.runner, workers=args.workers, dask_address=args.dask_address, beam_args=tuple(beam_args))


def describe_attacks() -> str:
    """Each attack kind with its parameters (type, default, meaning), from the attack classes' own docs."""
    import textwrap

    from ..simulators import ATTACKS

    blocks = []
    for kind, cls in ATTACKS.items():
        lines = [f"{kind}: {cls.summary()}"]
        for name, typ, default, meaning in cls.describe():
            lines.append(f"  {name} ({typ}; default: {default})")
            if meaning:
                lines += textwrap.wrap(meaning, width=96, initial_indent="      ", subsequent_indent="      ")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _history(args) -> int:
    import json

    from ..schemas import PoisonguardError
    from .history import history_table, recent_runs

    try:
        runs = recent_runs(args.history, args.last)
    except PoisonguardError as exc:
        print(f"poisonguard: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(runs, indent=2) if args.json else history_table(runs) if runs else f"{args.history}: no runs yet")
    return EXIT_OK


def _simulate(args, beam_args) -> int:
    from .images import image_options
    from .simulate import SimulateConfig, run_simulate

    result = run_simulate(SimulateConfig(
        inputs=tuple(args.inputs),
        out=args.out,
        config=args.config,
        seed=args.seed,
        label_column=args.label_column,
        id_column=args.id_column,
        feature_columns=args.feature_columns,
        batch_rows=args.batch_rows,
        runner=_runner_config(args, beam_args),
        na_values=args.na_values,
        allow_duplicate_ids=args.allow_duplicate_ids,
        images=image_options(args),
    ))
    counts = result.manifest["counts"]
    print(f"{counts['rows_in']} rows: {counts['valid']} valid, {counts['invalid']} invalid; {counts['touched']} touched, "
          f"{counts['injected']} injected; {counts['rows_out']} rows out ({counts['poisoned']} poisoned) -> {args.out}")
    return EXIT_OK


def _fit(args, beam_args) -> int:
    from .model import FitConfig, run_fit

    manifest = run_fit(FitConfig(
        inputs=tuple(args.inputs),
        out=args.out,
        label_column=args.label_column,
        id_column=args.id_column,
        feature_columns=args.feature_columns,
        detectors=args.detectors,
        target_fpr=args.target_fpr,
        validate=not args.no_validation,
        batch_rows=args.batch_rows,
        runner=_runner_config(args, beam_args),
        na_values=args.na_values,
        allow_duplicate_ids=args.allow_duplicate_ids,
    ))
    trusted = manifest["trusted_inputs"]
    keeps = manifest["keeps_reference_rows"]
    print(f"fitted {', '.join(d['name'] for d in manifest['detectors'])} on {trusted['valid_rows']:,} trusted rows "
          f"({trusted['invalid_rows']:,} invalid); cut at suspicion {manifest['decision']['cut']:.3g} "
          f"(target false-positive rate {manifest['decision']['target_fpr']:g})"
          + (f"; the model keeps trusted rows ({', '.join(keeps)})" if keeps else "") + f" -> {args.out}")
    return EXIT_OK


def _run(args, beam_args) -> int:
    from .images import image_options
    from .history import DriftRule
    from .screen import Policy, ScreenConfig, run_screen

    if args.command == "simulate":
        return _simulate(args, beam_args)
    if args.command == "fit":
        return _fit(args, beam_args)
    if args.command == "demo":
        from .demo import run_demo

        _, table = run_demo(args.out, _runner_config(args, []))
        print(table)
        return EXIT_OK

    config = ScreenConfig(
        inputs=tuple(args.inputs),
        out=args.out,
        label_column=args.label_column,
        id_column=args.id_column,
        feature_columns=args.feature_columns,
        detectors=args.detectors,
        contamination=args.contamination,
        alpha=args.alpha,
        reference=tuple(args.reference),
        target_fpr=args.target_fpr,
        policy=Policy(max_flagged_fraction=args.max_flagged_fraction, max_invalid_fraction=args.max_invalid_fraction,
                      on_failed_expectation=args.on_failed_expectation, min_valid_rows=args.min_valid_rows,
                      on_drift=args.on_drift),
        history=args.history,
        drift=DriftRule(window=args.drift_window, min_runs=args.drift_min_runs, k=args.drift_k, floor=args.drift_floor,
                        score_floor=args.drift_score_floor),
        expectations=args.expectations,
        validate=not args.no_validation,
        batch_rows=args.batch_rows,
        runner=_runner_config(args, beam_args),
        na_values=args.na_values,
        allow_duplicate_ids=args.allow_duplicate_ids,
        model=args.model,
        images=image_options(args),
    )
    result = run_screen(config)
    print(verdict_line(result.report, result.path("report.html")))
    return EXIT_BREACHED if result.breached else EXIT_OK


def verdict_line(report: dict, html: str) -> str:
    """One line for a person: the verdict, rows in and out, who flagged what, failed expectations, where the report is."""
    counts, policy = report["counts"], report["policy"]
    head = "BREACHED" if policy["breached"] else "accepted"
    parts = [f"{counts['rows_in']:,} rows in: {counts['cleaned']:,} cleaned, {counts['quarantine']:,} quarantined, "
             f"{counts['invalid']:,} invalid"]
    flagged_by = report.get("flagged_by") or {}
    if flagged_by:
        parts.append("flagged by " + ", ".join(f"{name} {n:,}" for name, n in flagged_by.items()))
    validation = report.get("validation")
    if validation is not None:
        failed = validation["failed"]
        parts.append(f"{len(failed)} of {validation['evaluated']} expectations failed" +
                     (f" ({', '.join(failed[:2])}{', ...' if len(failed) > 2 else ''})" if failed else ""))
    why = f" ({'; '.join(policy['reasons'])})" if policy["reasons"] else ""
    return f"{head}{why}: " + "; ".join(parts) + f"; report: {html}"


if __name__ == "__main__":
    sys.exit(main())
