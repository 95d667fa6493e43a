"""Job files: ``poisonguard run JOB.yaml`` runs ``poisonguard screen`` as one YAML file describes it.

The keys are not listed here: they come from ``screen``'s own argument parser, one key per option
(its ``dest``: ``--max-flagged-fraction`` is ``max_flagged_fraction``), inside a section per option
group (``policy``, ``validation``, ``execution``), the others at the top level (``inputs``, ``out``,
``detectors``, ``reference``, ``history``, ...), plus ``beam_args`` (what goes after ``--``). An
option added to ``screen`` gets its key, typed from its parser entry, without a change here. The
JSON Schema built from them (:func:`job_schema`; ``poisonguard run --schema`` prints it) validates
the file, and errors name the key in one line, as the attack configs' do. The YAML is read by
the attack configs' loader: the safe loader, at most 1 MB and 100,000 values once aliases expand.

``{date}`` in any text (inputs, out, history, ...) is the run's date, ``YYYY-MM-DD`` (``--date``,
default today); ``{date:%Y/%m/%d}`` formats it with ``strftime`` codes, for partitioned layouts.
The job becomes a ``screen`` command line: options after the job file are added to it (a single-
valued option replaces the key, a repeatable one adds), and ``--set KEY=VALUE`` replaces any key.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import sys
from collections.abc import Mapping

from ..schemas import ConfigError

#: ``{date}`` or ``{date:FORMAT}`` (strftime codes) in a job's texts.
DATE_FIELD = re.compile(r"\{date(?::([^{}]*))?\}")
#: What goes after ``--`` (Beam's pipeline options), a key of its own.
BEAM_ARGS = "beam_args"
#: Types of the CLI's value parsers (by function name), as JSON Schema; a list-valued parser takes a list or "a,b".
_TYPES = {
    "_fraction": {"type": "number", "minimum": 0, "maximum": 1},
    "_positive_int": {"type": "integer", "minimum": 1},
    "_count": {"type": "integer", "minimum": 0},
    "_integer": {"type": "integer"},
    "_nonnegative": {"type": "number", "minimum": 0},
}
_LISTS = {"_columns", "_texts"}


def screen_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``screen`` subcommand's parser inside the CLI's parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["screen"]
    raise RuntimeError("the CLI parser has no 'screen' subcommand")


def _section(title: str | None) -> str | None:
    """``"policy (exit code 1 when breached)"`` -> ``policy``; the parser's default groups -> top level (None)."""
    if title in (None, "positional arguments", "options", "optional arguments"):
        return None
    return re.sub(r"[^a-z0-9_]", "", title.split()[0].lower())


def job_keys(screen: argparse.ArgumentParser) -> dict:
    """Section (None: top level) -> {key: argparse action}, in the parser's order."""
    keys: dict = {None: {}}
    for group in screen._action_groups:
        section = _section(group.title)
        for action in group._group_actions:
            if isinstance(action, argparse._HelpAction) or action.dest == argparse.SUPPRESS:
                continue
            keys.setdefault(section, {})[action.dest] = action
    clash = set(keys[None]) & (set(keys) - {None})
    if clash or BEAM_ARGS in keys[None]:
        raise RuntimeError(f"job file keys clash: {sorted(clash) or BEAM_ARGS}")
    return keys


def _value_schema(action: argparse.Action) -> dict:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return {"type": ["boolean", "null"]}
    name = getattr(action.type, "__name__", None)
    if action.choices is not None:
        base = {"enum": list(action.choices)}
    elif name in _TYPES:
        base = dict(_TYPES[name])
    elif action.type is None or name in _LISTS or name == "str":
        base = {"type": "string"}
    else:  # a parser of its own: the text goes through it
        base = {"type": ["string", "number"]}
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*") or name in _LISTS
    if many:
        item = {**base, "type": "string"} if "type" in base and base["type"] == "string" else base
        return {"type": ["array", "string", "null"], "items": item, "minItems": 1, "minLength": 1,
                "description": "a list, or one text" + (" (comma-separated)" if name in _LISTS else "")}
    if "enum" in base:
        return {"enum": [*base["enum"], None]}
    types = base["type"] if isinstance(base["type"], list) else [base["type"]]
    return {**base, "type": [*types, "null"]}


def job_schema(parser: argparse.ArgumentParser) -> dict:
    """The JSON Schema of a job file, from ``screen``'s options (``parser``: the CLI's parser)."""
    keys = job_keys(screen_parser(parser))
    properties = {key: _value_schema(action) for key, action in keys[None].items()}
    for section, actions in keys.items():
        if section is not None:
            properties[section] = {"type": "object", "additionalProperties": False,
                                   "properties": {key: _value_schema(action) for key, action in actions.items()}}
    properties[BEAM_ARGS] = {"type": ["array", "null"], "items": {"type": "string"}}
    required = [a.dest for a in keys[None].values() if a.required or (not a.option_strings and a.nargs in ("+", None))]
    for key in required:  # no null: there is no default to fall back on
        if "type" in properties[key]:
            properties[key]["type"] = [t for t in properties[key]["type"] if t != "null"]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "poisonguard job file (poisonguard run)",
            "type": "object", "additionalProperties": False, "required": required, "properties": properties}


# -- from a job file to a screen command line ----------------------------------------------------
def _find(keys: dict, name: str) -> tuple[str | None, str]:
    """``policy.max_flagged_fraction`` or just ``max_flagged_fraction`` -> (section, key)."""
    if "." in name:
        section, key = name.split(".", 1)
        if section in keys and section is not None and key in keys[section]:
            return section, key
    else:
        if name in keys[None] or name == BEAM_ARGS:
            return None, name
        found = [s for s, actions in keys.items() if s is not None and name in actions]
        if len(found) == 1:
            return found[0], name
    allowed = [*keys[None], BEAM_ARGS, *(f"{s}.{k}" for s, actions in keys.items() if s is not None for k in actions)]
    raise ConfigError(f"--set {name}: unknown key; allowed keys: {', '.join(allowed)}")


def apply_sets(doc: dict, sets: list[str], keys: dict) -> dict:
    """``--set KEY=VALUE`` (VALUE read as YAML: ``0.02``, ``true``, ``[spectral, knn]``) replaces the key's value."""
    import yaml

    doc = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in doc.items()}
    for item in sets:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. policy.max_flagged_fraction=0.02")
        section, key = _find(keys, name.strip())
        try:
            value = yaml.safe_load(text) if len(text) <= 4096 else text
        except yaml.YAMLError:
            value = text
        if section is None:
            doc[key] = value
        else:
            if not isinstance(doc.get(section, {}), Mapping):
                raise ConfigError(f"--set {name}: the job's '{section}' is not a mapping")
            doc[section] = {**(doc.get(section) or {}), key: value}
    return doc


def expand_dates(value, date: dt.date, where: str = ""):
    """Every text with ``{date}`` / ``{date:FORMAT}`` replaced by the run's date."""
    if isinstance(value, str):
        def one(match):
            fmt = match.group(1)
            return date.isoformat() if fmt is None else date.strftime(fmt)
        return DATE_FIELD.sub(one, value)
    if isinstance(value, Mapping):
        return {k: expand_dates(v, date, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_dates(v, date, where) for v in value]
    return value


def _option(action: argparse.Action) -> str:
    longs = [o for o in action.option_strings if o.startswith("--")]
    return max(longs or action.option_strings, key=len)


def _text(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def job_argv(doc: dict, keys: dict) -> tuple[list[str], list[str]]:
    """A validated job as ``screen`` arguments, and its Beam options."""
    positional, options = [], []
    flat = [(key, doc.get(key), action) for key, action in keys[None].items()]
    for section, actions in keys.items():
        if section is not None:
            flat += [(key, (doc.get(section) or {}).get(key), action) for key, action in actions.items()]
    for key, value, action in flat:
        if value is None:
            continue
        if not action.option_strings:  # the inputs
            positional += [value] if isinstance(value, str) else [_text(v) for v in value]
            continue
        opt = _option(action)
        name = getattr(action.type, "__name__", None)
        if isinstance(action, argparse._StoreTrueAction):
            options += [opt] if value else []
        elif isinstance(action, argparse._StoreFalseAction):
            options += [] if value else [opt]
        elif isinstance(action, argparse._AppendAction):
            for v in ([value] if isinstance(value, str) else value):
                options += [opt, _text(v)]
        elif name in _LISTS:
            options += [opt, value if isinstance(value, str) else ",".join(_text(v) for v in value)]
        else:
            options += [f"{opt}={_text(value)}"]
    return [*positional, *options], [str(v) for v in doc.get(BEAM_ARGS) or []]


def _validate(doc, schema: dict, source: str) -> None:
    import jsonschema

    from ..simulators.config import _kind_of, _raise_first

    if not isinstance(doc, Mapping):
        got = "an empty document" if doc is None else _kind_of(doc)
        raise ConfigError(f"{source}: expected a mapping of job keys (inputs, out, ...), got {got}")
    _raise_first(jsonschema.Draft202012Validator(schema).iter_errors(dict(doc)), dict(doc), f"{source}: ", [])


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def run_parser(parser_class) -> argparse.ArgumentParser:
    p = parser_class(prog="poisonguard run", allow_abbrev=False,
                     description="Run 'poisonguard screen' as a job file describes it. Options after JOB.yaml: any "
                                 "screen option (replaces the key; --reference adds) and these. Beam options after '--'.")
    p.add_argument("job", metavar="JOB.yaml", nargs="?", help="the job file (YAML; keys: poisonguard run --schema)")
    p.add_argument("--date", type=_date, metavar="YYYY-MM-DD", help="the date {date} stands for (default: today)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="replace a key (policy.max_flagged_fraction=0.02; VALUE is YAML), repeatable")
    p.add_argument("--show", action="store_true", help="print the screen command line the job runs, and exit")
    p.add_argument("--schema", action="store_true", help="print the job file's JSON Schema, and exit")
    return p


def screen_argv_for_job(argv: list[str], parser: argparse.ArgumentParser, parser_class,
                        beam_args: list[str] = ()) -> tuple[list[str], list[str]] | int:
    """``poisonguard run`` arguments -> ``["screen", ...]`` and the Beam options (the job's, then ``beam_args`` from the
    command line); an exit code when done already (``--show``, ``--schema``)."""
    from ..simulators.config import load_yaml_file

    ns, rest = run_parser(parser_class).parse_known_args(argv)
    schema = job_schema(parser)
    if ns.schema:
        print(json.dumps(schema, indent=2))
        return 0
    if ns.job is None:
        raise ConfigError("run: expected a job file: poisonguard run JOB.yaml (see poisonguard run --help)")
    keys = job_keys(screen_parser(parser))
    doc = load_yaml_file(ns.job, "job file")
    _validate(doc, {**schema, "required": []}, ns.job)  # the file's own keys first: errors name its keys
    doc = apply_sets(doc, ns.set, keys)
    _validate(doc, schema, ns.job + (" with --set" if ns.set else ""))
    doc = expand_dates(doc, ns.date or dt.date.today())
    screen_args, job_beam = job_argv(doc, keys)
    argv_out, beam_args = ["screen", *screen_args, *rest], [*job_beam, *beam_args]
    if ns.show:
        print(shlex.join(["poisonguard", *argv_out, *(["--", *beam_args] if beam_args else [])]))
        return 0
    return argv_out, beam_args


if __name__ == "__main__":  # pragma: no cover - a convenience: python -m poisonguard.pipelines.jobs > job.schema.json
    from .cli import build_parser

    json.dump(job_schema(build_parser()), sys.stdout, indent=2)
