"""Attack configs: a YAML (or JSON) file -> validated :class:`~poisonguard.simulators.Attack` objects.

A config lists attacks applied in order (each sees the previous one's output) and the seed
of every row-selection hash::

    seed: 7
    attacks:
      - kind: label_flip
        mode: random          # random | targeted | noise_matrix | boundary
        rate: 0.10
      - kind: backdoor
        trigger:
          features: {amount: 950.0, n_items: 12}
        source: "legit"
        target: "fraud"
        rate: 0.05            # fraction of the eligible rows; or count: 500

Checks, in order, each raising :class:`~poisonguard.schemas.ConfigError` with one line that
names the file, the key path (``attacks[1].trigger.features.amount``) and what was
expected: the file exists and parses as YAML (duplicate keys are an error, not "last one
wins"); the document matches ``schemas/attack_config.schema.json`` (unknown keys, listing
the allowed ones; wrong types; values out of range; unknown kinds, listing the kinds); the
attack constructors accept the values (rules across keys, e.g. targeted mode needs
``source`` and ``target``); names are unique. Whatever depends on the data is checked by
the job: columns an attack names before any pipeline runs (:meth:`AttackConfig.check_columns`),
classes after the profile pass.

Names: an attack's ``name`` is written to the ``attack`` column and keys its row-selection
hash. Without one, the attack takes its kind's default (``label_flip_random``,
``backdoor``...), with ``_2``, ``_3``... appended when an earlier attack already has that
name; two attacks given the same explicit name are an error.

Label values (``source``, ``target``, ``label``, the keys of ``matrix``) are matched to the
data's label type by :meth:`AttackConfig.for_labels`: with text labels (every CSV input),
``target: 1`` means the class ``"1"``; with integer labels, ``target: "1"`` means ``1``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import NamedTuple

import pyarrow as pa
import yaml

from ..schemas import ConfigError, load_json_schema
from .base import Attack

#: Fields whose values are classes of the label column (matched to its type by ``for_labels``).
LABEL_FIELDS = ("source", "target", "label")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A validated attack config; unpacks as ``seed, attacks = load_attack_config(path)``.

    ``source`` names the file in error messages and ``sha256`` is the hash of its bytes
    (both None for a config given as a dict or objects); ``specs`` holds each attack's
    mapping as written (None for attacks given as objects).
    """

    seed: int
    attacks: tuple
    source: str | None = None
    specs: tuple = ()
    sha256: str | None = None

    def __iter__(self):
        return iter((self.seed, self.attacks))

    def where(self, index: int, key: str = "") -> str:
        """``"FILE: attacks[i].key"``, the prefix of an error message about one attack."""
        path = f"attacks[{index}]{'.' + key if key else ''}"
        return f"{self.source}: {path}" if self.source else path

    @contextlib.contextmanager
    def located(self, index: int):
        """Re-raise a ConfigError about attack ``index`` (``"backdoor.target: ..."``) with its file and key path."""
        try:
            yield
        except ConfigError as exc:
            attack = self.attacks[index]
            raise ConfigError(_relocate(str(exc), attack, self.where(index))) from None

    def for_labels(self, label_type: pa.DataType) -> AttackConfig:
        """The same attacks with label values converted to the data's label type (see the module docstring)."""
        to_text = not pa.types.is_integer(label_type)
        attacks = []
        for i, attack in enumerate(self.attacks):
            changes = {}
            for name in LABEL_FIELDS:
                value = getattr(attack, name, None)
                if value is not None and _as_label(value, to_text) != value:
                    changes[name] = _as_label(value, to_text)
            matrix = getattr(attack, "matrix", None)
            if isinstance(matrix, Mapping):
                coerced = {_as_label(k, to_text): {_as_label(j, to_text): p for j, p in row.items()} for k, row in matrix.items()}
                if coerced != {k: dict(row) for k, row in matrix.items()}:
                    changes["matrix"] = coerced
            if changes:
                with self.located(i):
                    attack = dataclasses.replace(attack, **changes)
            attacks.append(attack)
        return dataclasses.replace(self, attacks=tuple(attacks))

    def check_columns(self, feature_columns, columns=()) -> None:
        """ConfigError unless every column an attack names is a feature column of the data."""
        features = tuple(feature_columns)
        for i, attack in enumerate(self.attacks):
            spec = self.specs[i] if i < len(self.specs) else None
            for key, named in _named_columns(attack, spec):
                for column in named:
                    if column in features:
                        continue
                    path = f"{key}.{column}" if key.endswith((".features", ".quantiles")) else key
                    what = (f"'{column}' is a column of the data but not a feature column" if column in columns
                            else f"no column '{column}' in the data")
                    raise ConfigError(f"{self.where(i, path)}: {what} (feature columns: {', '.join(features)})")


def _as_label(value, to_text: bool):
    if to_text:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return str(int(value))
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return value


def _named_columns(attack: Attack, spec):
    """``(key path, column names)`` of every column the attack refers to."""
    triggers = getattr(attack, "trigger", None)
    if triggers:
        listed = isinstance(spec, Mapping) and isinstance(spec.get("trigger"), list)
        for j, trigger in enumerate(triggers):
            base = f"trigger[{j}]" if listed or len(triggers) > 1 else "trigger"
            if hasattr(trigger, "values") and isinstance(trigger.values, Mapping):
                yield f"{base}.features", tuple(trigger.values)
            elif hasattr(trigger, "quantiles"):
                yield f"{base}.quantiles", tuple(trigger.quantiles)
            elif getattr(trigger, "pixel_columns", None):
                yield f"{base}.pixel_columns", tuple(trigger.pixel_columns)
    columns = getattr(attack, "columns", None)
    if columns:
        yield "columns", tuple(columns)


def _relocate(message: str, attack: Attack, where: str) -> str:
    """``"backdoor.trigger.features['x']: ..."`` -> ``"FILE: attacks[1].trigger.features['x']: ..."``."""
    for prefix in dict.fromkeys((attack.name, attack.kind)):
        if message.startswith(prefix) and message[len(prefix):len(prefix) + 1] in (".", "[", ":"):
            rest = message[len(prefix):]
            return f"{where}{rest}"
    return f"{where}: {message}"


# -- loading -----------------------------------------------------------------------------------
def load_attack_config(path: str) -> AttackConfig:
    """Read and validate a YAML attack config; returns ``AttackConfig(seed, attacks, ...)``."""
    data = _read_bytes(path)
    loaded = attacks_from_dict(_parse_yaml(data, path), source=path)
    return dataclasses.replace(loaded, sha256=hashlib.sha256(data).hexdigest())


def attacks_from_dict(doc, *, source: str | None = None) -> AttackConfig:
    """Validate a config already parsed (a dict like the YAML's) and build its attacks.

    Items of ``doc["attacks"]`` may also be Attack objects, taken as they are. ``source``
    names the config in error messages.
    """
    prefix = f"{source}: " if source else ""
    if not isinstance(doc, Mapping):
        got = "an empty document" if doc is None else _kind_of(doc)
        raise ConfigError(f"{prefix}expected a mapping with an 'attacks' list (and optionally 'seed'), got {got}")
    doc = dict(doc)
    items = doc.get("attacks")
    root = {**doc, "attacks": [{} for _ in items]} if isinstance(items, list) else doc
    _raise_first(_validator("root").iter_errors(root), root, prefix, [])
    for i, item in enumerate(items):
        if not isinstance(item, Attack):
            _raise_first(_validator("attack").iter_errors(item), item, prefix, ["attacks", i])
    registry = attack_kinds()
    where = AttackConfig(0, (), source).where
    attacks, specs = [], []
    for i, item in enumerate(items):
        if isinstance(item, Attack):
            attacks.append(item)
            specs.append(None)
            continue
        params = {k: v for k, v in item.items() if k != "kind"}
        cls = registry.get(item["kind"])
        if cls is None:
            raise ConfigError(f"{where(i, 'kind')}: unknown attack kind {item['kind']!r}; expected one of: {', '.join(registry)}")
        try:
            attacks.append(cls(**params))
        except ConfigError as exc:
            raise ConfigError(_relocate(str(exc), _Named(cls.kind, str(params.get("name") or cls.kind)), where(i))) from None
        except TypeError as exc:  # a field the schema allows but the class does not take: out of sync
            raise ConfigError(f"{where(i)}: {exc}") from None
        specs.append(item)
    attacks = _unique_names(attacks, [isinstance(s, Mapping) and "name" in s or s is None for s in specs], where)
    return AttackConfig(seed=int(doc.get("seed", 0)), attacks=tuple(attacks), source=source, specs=tuple(specs))


class _Named(NamedTuple):
    kind: str
    name: str


def _unique_names(attacks, explicit, where) -> list:
    """Keep explicit names (an error when repeated); number default names that repeat one before."""
    used: dict[str, int] = {}
    for i, (attack, given) in enumerate(zip(attacks, explicit)):
        if given:
            if attack.name in used:
                raise ConfigError(f"{where(i, 'name')}: {attack.name!r} is already the name of attacks[{used[attack.name]}]; "
                                  "each attack needs its own name")
            used[attack.name] = i
    out = []
    for i, (attack, given) in enumerate(zip(attacks, explicit)):
        if not given:
            name, k = attack.name, 2
            while name in used:
                name, k = f"{attack.name}_{k}", k + 1
            if name != attack.name:
                attack = dataclasses.replace(attack, name=name)
            used[name] = i
        out.append(attack)
    return out


def attack_kinds() -> dict:
    """Attack kind -> class, from the library's registry."""
    from . import ATTACKS

    return dict(ATTACKS)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a repeated key in a mapping is an error."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            repeated = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "found an unhashable key", key_node.start_mark) from None
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


#: Largest attack config read, in bytes: configs are a few lines; a noise matrix of 100
#: classes is about 100 KB.
MAX_CONFIG_BYTES = 1 << 20
#: Most values (scalars, lists, mappings) a config may hold once its aliases are expanded:
#: an alias repeats what its anchor holds, and nine nested levels of nine aliases make a
#: 1 KB file of 387 million values (the "billion laughs").
MAX_CONFIG_VALUES = 100_000


def _read_bytes(path: str, what: str = "attack config") -> bytes:
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such {what} file")
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory; expected {_a(what)} file (YAML)")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {os.path.getsize(path) / 1e6:.1f} MB; {_a(what)} is at most "
                          f"{MAX_CONFIG_BYTES >> 20} MB")
    return data


def _a(what: str) -> str:
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"


def load_yaml_file(path: str, what: str):
    """A small YAML file (a config, a job) as plain data: the size limits and the safe loader of attack configs.

    ``what`` names the kind of file in error messages (one line, naming ``path``).
    """
    return _parse_yaml(_read_bytes(path, what), path, what)


def _expanded_values(node, path: str, memo: dict, active: set, what: str = "attack config") -> int:
    """Values under ``node`` with every alias expanded, counted without expanding them."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ConfigError(f"{path}: an alias refers to a value that contains it (a recursive YAML structure); "
                          "expected plain data")
    active.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_values(child, path, memo, active, what) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_values(k, path, memo, active, what) + _expanded_values(v, path, memo, active, what)
                     for k, v in node.value)
    active.discard(key)
    memo[key] = total
    if total > MAX_CONFIG_VALUES:
        raise ConfigError(f"{path}: the YAML holds more than {MAX_CONFIG_VALUES} values once its aliases (*name) are "
                          f"expanded; expected a small {what}")
    return total


def _parse_yaml(data: bytes, path: str, what: str = "attack config"):
    """Parse the config: compose the node graph (aliases stay shared), bound its expanded size, then build it."""
    try:
        loader = _UniqueKeyLoader(data.decode("utf-8"))  # a SafeLoader: plain data only, never Python objects
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _expanded_values(node, path, {}, set(), what)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except RecursionError:
        raise ConfigError(f"{path}: the YAML is nested too deeply; expected a small {what}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}") from None


# -- JSON Schema errors as one line ------------------------------------------------------------
@functools.cache
def _validator(which: str):
    import jsonschema

    schema = load_json_schema("attack_config")
    if which == "root":  # attack items are checked one by one (they may be Attack objects)
        schema = json.loads(json.dumps(schema))
        schema["properties"]["attacks"]["items"] = {}
    else:
        schema = {"$defs": schema["$defs"], "$ref": "#/$defs/attack"}
    return jsonschema.Draft202012Validator(schema)


def key_path(parts) -> str:
    """``["attacks", 1, "trigger", "features", "amount"]`` -> ``attacks[1].trigger.features.amount``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out


def _doc_order(doc, parts) -> tuple:
    """Position of a key path in the document, so the first error in the file is reported."""
    key, node = [], doc
    for part in parts:
        if isinstance(node, Mapping):
            keys = list(node)
            key.append(keys.index(part) if part in keys else len(keys))
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            key.append(part)
            node = node[part] if part < len(node) else None
        else:
            key.append(0)
            node = None
    return tuple(key)


def _raise_first(errors, doc, prefix: str, base: list) -> None:
    errors = list(errors)
    if not errors:
        return
    error = min(errors, key=lambda e: (_doc_order(doc, list(e.absolute_path)), -len(e.absolute_path)))
    path, message = _explain(error)
    full = key_path(base + path)
    raise ConfigError(f"{prefix}{full or 'top level'}: {message}")


_TYPES = {"number": "a number", "integer": "an integer", "string": "a string", "object": "a mapping",
          "array": "a list", "boolean": "true or false", "null": "nothing"}


def _kind_of(value) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a number)"
    return f"{value!r} (a string)" if isinstance(value, str) else repr(value)


def _explain(error) -> tuple[list, str]:
    """The key path and a one-line explanation of a jsonschema ValidationError."""
    path, schema, value, v = list(error.absolute_path), error.schema, error.instance, error.validator
    if v == "additionalProperties" and isinstance(value, Mapping):
        allowed = list(schema.get("properties", {}))
        extra = [k for k in value if k not in allowed]
        return path + extra[:1], f"unknown key; allowed keys: {', '.join(allowed)}"
    if v == "required" and isinstance(value, Mapping):
        missing = [k for k in error.validator_value if k not in value]
        needed = f" (kind {value['kind']} needs it)" if isinstance(value.get("kind"), str) else ""
        return path + missing[:1], f"required key missing{needed}"
    if v == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return path, f"expected {' or '.join(_TYPES.get(t, t) for t in types)}, got {_kind_of(value)}"
    if v == "enum":
        options = ", ".join(str(o) for o in error.validator_value)
        if path and path[-1] == "kind":
            return path, f"unknown attack kind {value!r}; expected one of: {options}"
        return path, f"expected one of: {options}; got {_kind_of(value)}"
    if v == "const":
        return path, f"expected {error.validator_value!r}, got {_kind_of(value)}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if v in bounds:
        return path, f"expected a number {bounds[v]} {error.validator_value}, got {_kind_of(value)}"
    if v in ("minItems", "minProperties"):
        what = "item" if v == "minItems" else "entry"
        n = error.validator_value
        return path, f"expected at least {n} {what}{'s' if n != 1 else ''}, got none" if not value else f"expected at least {n} {what}s"
    if v in ("maxItems", "maxProperties"):
        return path, f"expected at most {error.validator_value} items, got {len(value)}"
    if v == "minLength":
        return path, "expected a non-empty string"
    if v in ("oneOf", "anyOf"):
        described = schema.get("description")
        return path, f"expected {described}, got {_kind_of(value)}" if described else f"got {_kind_of(value)}, which is none of the allowed forms"
    return path, error.message
