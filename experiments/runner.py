"""Resumable execution of a study: a list of independent runs, each saved when it finishes.

A study plans its runs from a configuration, executes each into its own
directory, and summarises the finished results into CSV/JSON tables and
figures. A run whose ``result.json`` exists is not redone, so an interrupted
study resumes where it stopped (runs that checkpoint internally, such as
training runs, also resume mid-run from their own directory). Summaries read
every result back from its file, so a fresh and a resumed study write the
same tables. A run whose data set this machine cannot provide is skipped
with a message, not recorded, so it runs once the data is there; the others
go on.

Every run's full configuration (``Study.run_config``: its settings and the
study-level values it reads) is stored with its result and in its directory
when it starts; a finished or interrupted run is reused only when that
configuration matches the current one. A run whose configuration changed is
moved to ``replaced/`` (nothing is deleted) and run again, and the study says so.
A study's configuration is checked against ``Study.schema`` before anything
runs: every error names the file and the key.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from flowopt.training.data import DataUnavailableError

STUDIES_DIR = Path(__file__).parent / "studies"
CONFIG_NAMES = ("smoke", "cpu", "gpu")
"""The configurations every study ships, smallest first; a study may ship others (``gpu_budget``)."""


class RunSpec(NamedTuple):
    """One independent run of a study: a unique ``key`` (a directory name) and its settings."""

    key: str
    settings: dict[str, Any]


class ConfigFileError(ValueError):
    """A study configuration is malformed; the message names the file and the key."""


# --------------------------------------------------------------------------- configuration schemas


class Schema:
    """A check of one JSON value: ``check(value, path)`` returns a problem (a string) or None."""

    def __init__(self, describe: str, test: Callable[[Any], bool]):
        self.describe = describe
        self.test = test

    def check(self, value: Any, path: str) -> Iterable[tuple[str, str]]:
        if not self.test(value):
            yield path, f"must be {self.describe}, got {_show(value)}"


def _show(value: Any) -> str:
    text = json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


STRING = Schema("a non-empty string", lambda v: isinstance(v, str) and bool(v))
BOOL = Schema("true or false", lambda v: isinstance(v, bool))
NUMBER = Schema("a finite number", _is_number)
POSITIVE = Schema("a positive finite number", lambda v: _is_number(v) and v > 0)
NON_NEGATIVE = Schema("a non-negative finite number", lambda v: _is_number(v) and v >= 0)
POSITIVE_INT = Schema("a positive integer", lambda v: _is_int(v) and v > 0)
NON_NEGATIVE_INT = Schema("a non-negative integer", lambda v: _is_int(v) and v >= 0)
ANY = Schema("any value", lambda v: True)


def one_of(*choices: Any) -> Schema:
    """One of ``choices``."""
    return Schema(f"one of {list(choices)}", lambda v: _jsonable(v) and v in choices)


def satisfies(describe: str, test: Callable[[Any], bool]) -> Schema:
    """A value for which ``test`` holds."""
    return Schema(describe, test)


class Optional_(Schema):
    """A key that may be absent (``nullable``: or null)."""

    def __init__(self, inner: Any, nullable: bool = False):
        self.inner, self.nullable = inner, nullable

    def check(self, value: Any, path: str) -> Iterable[tuple[str, str]]:
        if value is None and self.nullable:
            return
        yield from check_value(self.inner, value, path)


def optional(inner: Any, nullable: bool = False) -> Optional_:
    """A key that may be absent (and, with ``nullable``, null)."""
    return Optional_(inner, nullable)


class Nullable(Schema):
    """A required key whose value may be null."""

    def __init__(self, inner: Any):
        self.inner = inner

    def check(self, value: Any, path: str) -> Iterable[tuple[str, str]]:
        if value is not None:
            yield from check_value(self.inner, value, path)


class _Container(Schema):
    """A list or mapping of at least ``min_length`` elements, each checked by ``check_elements``."""

    kind: type = object
    noun, element = "", ""
    min_length = 0

    def check(self, value: Any, path: str) -> Iterable[tuple[str, str]]:
        if not isinstance(value, self.kind):
            yield path, f"must be a {self.noun}, got {_show(value)}"
            return
        if len(value) < self.min_length:
            yield path, f"must hold at least {self.min_length} {self.element}, got {_show(value)}"
        yield from self.check_elements(value, path)

    def check_elements(self, value: Any, path: str) -> Iterable[tuple[str, str]]:
        raise NotImplementedError


class ListOf(_Container):
    """A list (at least ``min_length`` items) of values matching ``item``; ``unique``: a key no two items share."""

    kind, noun, element = list, "list", "item(s)"

    def __init__(self, item: Any, min_length: int = 1, unique: str | None = None):
        self.item, self.min_length, self.unique = item, min_length, unique

    def check_elements(self, value: Any, path: str) -> Iterable[tuple[str, str]]:
        seen: set[Any] = set()
        for i, item in enumerate(value):
            yield from check_value(self.item, item, f"{path}[{i}]")
            if self.unique is not None and isinstance(item, dict) and _jsonable(item.get(self.unique)):
                name = json.dumps(item.get(self.unique))
                if name in seen:
                    yield f"{path}[{i}].{self.unique}", f"repeats {name}: each {self.unique} must be unique"
                seen.add(name)


class MapOf(_Container):
    """A mapping from names (matching ``keys``, if given) to values matching ``value``."""

    kind, noun, element = dict, "mapping", "entry"

    def __init__(self, value: Any, keys: Schema | None = None, min_length: int = 0):
        self.value, self.keys, self.min_length = value, keys, min_length

    def check_elements(self, value: Any, path: str) -> Iterable[tuple[str, str]]:
        for key, item in value.items():
            if self.keys is not None and not self.keys.test(key):
                yield f"{path}.{key}", f"is not a valid name: must be {self.keys.describe}"
            yield from check_value(self.value, item, f"{path}.{key}")


def check_value(schema: Any, value: Any, path: str) -> Iterable[tuple[str, str]]:
    """Every ``(key path, problem)`` of ``value`` against ``schema``.

    A schema is a :class:`Schema`, or a dict of key to schema (a record: keys
    wrapped in :func:`optional` may be absent, any other key is unknown).
    """
    if isinstance(schema, Schema):
        yield from schema.check(value, path)
        return
    if not isinstance(value, dict):
        yield path or "(top level)", f"must be a mapping, got {_show(value)}"
        return
    for key, sub in schema.items():
        where = f"{path}.{key}" if path else key
        if key not in value:
            if not isinstance(sub, Optional_):
                yield where, "is missing"
            continue
        yield from check_value(sub, value[key], where)
    for key in value:
        if key not in schema:
            where = f"{path}.{key}" if path else key
            yield where, f"is not a known key; valid keys here: {', '.join(sorted(schema))}"


COMMON = {"description": optional(STRING), "config_name": optional(STRING), "seed": optional(NON_NEGATIVE_INT)}
"""Keys every study configuration may hold."""


# --------------------------------------------------------------------------- studies


class Study(NamedTuple):
    """A study: plan runs from a config, execute one run, summarise all results.

    Attributes:
      name: the command-line name, e.g. ``"runge-kutta"``.
      plan: ``config -> list[RunSpec]``.
      execute: ``(spec, config, run_dir) -> result`` (a JSON-serialisable dict).
      summarize: ``(config, {key: result}, output_dir) -> None``: tables and figures.
      schema: the configuration's schema (see :func:`check_value`); None: not checked.
      run_config: ``(spec, config) -> dict``: everything a run's result depends on
        (its settings and the study-level values ``execute`` reads). None: the
        settings and the whole configuration (any change re-runs every run).
      check_run: ``(spec, config) -> None``: raise ValueError for a planned run
        that cannot start (e.g. training settings TrainConfig rejects).
    """

    name: str
    plan: Callable[[dict[str, Any]], list[RunSpec]]
    execute: Callable[[RunSpec, dict[str, Any], Path], dict[str, Any]]
    summarize: Callable[[dict[str, Any], dict[str, dict[str, Any]], Path], None]
    schema: Any = None
    run_config: Callable[[RunSpec, dict[str, Any]], dict[str, Any]] | None = None
    check_run: Callable[[RunSpec, dict[str, Any]], None] | None = None


_DESCRIPTIVE = ("description", "config_name")


def full_run_config(study: Study, spec: RunSpec, config: dict[str, Any]) -> dict[str, Any]:
    """The run's full configuration as stored with its result (JSON-normalised)."""
    if study.run_config is not None:
        values = study.run_config(spec, config)
    else:
        values = {"settings": spec.settings, "config": {k: v for k, v in config.items() if k not in _DESCRIPTIVE}}
    return json.loads(json.dumps(values, sort_keys=True))


def study_module(study: str) -> str:
    """The package of study ``study`` (``runge-kutta`` -> ``experiments.studies.runge_kutta``)."""
    return f"experiments.studies.{study.replace('-', '_')}"


def config_dir(study: str) -> Path:
    """The folder of the configurations study ``study`` ships: ``experiments/studies/<study>/configs``."""
    return STUDIES_DIR / study.replace("-", "_") / "configs"


def config_names(study: str) -> tuple[str, ...]:
    """The names of the configurations ``study`` ships: those of :data:`CONFIG_NAMES` first, then the others."""
    shipped = sorted(path.stem for path in config_dir(study).glob("*.json"))
    return tuple(n for n in CONFIG_NAMES if n in shipped) + tuple(n for n in shipped if n not in CONFIG_NAMES)


def load_config(study: str, config: str) -> dict[str, Any]:
    """The configuration ``config`` that ``study`` ships (see :func:`config_names`), or a path to a JSON file.

    Raises:
      ConfigFileError: an unknown name, a missing or unreadable file, invalid JSON or not a mapping
        (the message names the file).
    """
    path = config_path(study, config)
    if not path.is_file():
        raise ConfigFileError(f"no configuration file {path} for study {study!r}.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigFileError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}.") from error
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigFileError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}.") from error
    if not isinstance(settings, dict):
        raise ConfigFileError(f"{path} must hold a JSON object of settings, got {type(settings).__name__}.")
    settings.setdefault("config_name", path.stem)
    return settings


def config_path(study: str, config: str) -> Path:
    """The file behind a configuration name (``smoke``, ``cpu``, ...) or path."""
    if not isinstance(config, str) or not config.strip():
        raise ConfigFileError(f"config must be one of {config_names(study)} or a .json file, got {config!r}.")
    path = Path(config).expanduser()
    if not path.suffix:
        if config not in config_names(study):
            raise ConfigFileError(f"config must be one of {config_names(study)} or a .json file, got {config!r}.")
        path = config_dir(study) / f"{config}.json"
    return path


def check_config(study: Study, config: dict[str, Any], source: str | os.PathLike | None = None) -> list[RunSpec]:
    """Check ``config`` against the study's schema, plan it and check every run; return the plan.

    Raises:
      ConfigFileError: naming the file (``source``) and the key at fault.
    """
    source = os.fspath(source) if source is not None else f"the {study.name} configuration"
    if study.schema is not None:
        for path, problem in check_value(study.schema, config, ""):
            raise ConfigFileError(f"{source}: key {path} {problem}.")
    try:
        specs = study.plan(config)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        raise ConfigFileError(f"{source}: {_reason(error)}") from error
    keys = [spec.key for spec in specs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ConfigFileError(f"{source}: the study {study.name} plans the run(s) {duplicates} more than once.")
    if study.check_run is not None:
        for spec in specs:
            try:
                study.check_run(spec, config)
            except ValueError as error:
                raise ConfigFileError(f"{source}: run {spec.key}: {_reason(error)}") from error
    return specs


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, KeyError):
        return f"key {text} is missing"
    return text


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` under a temporary name, flush it to disk, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is unreadable or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    """``key: old → new`` for each leaf where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{where}: (absent) → {_show(new[key])}")
            elif key not in new:
                out.append(f"{where}: {_show(old[key])} → (absent)")
            else:
                out += _differences(old[key], new[key], where)
        return out
    return [] if old == new else [f"{path or '(value)'}: {_show(old)} → {_show(new)}"]


def _set_aside(run_dir: Path, output_dir: Path) -> Path:
    """Move a run directory to ``output_dir/replaced/<key>-<n>`` (never deleting it); return the new place."""
    replaced = output_dir / "replaced"
    replaced.mkdir(parents=True, exist_ok=True)
    n = 1
    while (replaced / f"{run_dir.name}-{n}").exists():
        n += 1
    target = replaced / f"{run_dir.name}-{n}"
    os.replace(run_dir, target)
    return target


def _record(study: Study, spec: RunSpec, config: dict[str, Any]) -> dict[str, Any]:
    """What is stored to recognise a run: its full configuration, its settings and the study's configuration."""
    return json.loads(
        json.dumps(
            {
                "run_config": full_run_config(study, spec, config),
                "settings": spec.settings,
                "study_config": {k: v for k, v in config.items() if k not in _DESCRIPTIVE},
            },
            sort_keys=True,
        )
    )


def _changes(study: Study, stored: dict[str, Any], current: dict[str, Any]) -> list[str] | None:
    """How a stored record differs from the current one ([] if it matches); None if it cannot be compared.

    A study with a ``run_config`` compares those; one without compares the
    settings and the whole study configuration.
    """
    if study.run_config is not None:
        if "run_config" not in stored:
            return None
        return _differences(stored["run_config"], current["run_config"])
    if "study_config" not in stored:
        return None
    return _differences(
        {"settings": stored.get("settings"), "config": stored["study_config"]},
        {"settings": current["settings"], "config": current["study_config"]},
    )


def _stale_reason(study: Study, run_dir: Path, record: dict[str, Any]) -> tuple[str | None, dict | None]:
    """Why the run in ``run_dir`` cannot be reused (None if it can), and its result if it is finished."""
    done = run_dir / "result.json"
    if done.is_file():
        result = _read_json(done)
        if not isinstance(result, dict):
            return "its result.json is unreadable or not a JSON object", None
        changes = _changes(study, result, record)
        if changes is None:  # recorded before full configurations were stored: the settings at least must match
            stored = json.loads(json.dumps(result.get("settings"), sort_keys=True))
            changes = _differences(stored, record["settings"])
            return (f"its settings changed ({'; '.join(changes)})" if changes else None), result
        return (f"its configuration changed ({'; '.join(changes)})" if changes else None), result
    started = run_dir / "run_config.json"
    if started.is_file():
        stored = _read_json(started)
        changes = _changes(study, stored, record) if isinstance(stored, dict) else None
        if changes is None:
            return "its run_config.json is unreadable", None
        if changes:
            return f"its configuration changed since it started ({'; '.join(changes)})", None
    return None, None


def run_study(
    study: Study, config: dict[str, Any], output_dir: Path, progress: bool = True, source: str | os.PathLike | None = None
) -> dict[str, dict]:
    """Execute every planned run not yet finished, then summarise; returns ``{key: result}``.

    A finished run is reused only when its stored configuration matches the
    current one; a run whose configuration changed is moved to ``replaced/``
    and run again (both are reported on stdout).
    """
    specs = check_config(study, config, source)
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_json(output_dir / "config.json", config)
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    unchecked: list[str] = []
    bar = tqdm(specs, desc=study.name, unit="run", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(spec.key)
        run_dir = output_dir / "runs" / spec.key
        done = run_dir / "result.json"
        record = _record(study, spec, config)
        if run_dir.is_dir():
            reason, result = _stale_reason(study, run_dir, record)
            if reason is not None:
                moved = _set_aside(run_dir, output_dir)
                tqdm.write(f"{study.name}: run {spec.key}: {reason}; running it again (the old run is kept in {moved}).")
            elif result is not None:
                if "study_config" not in result:
                    unchecked.append(spec.key)
                results[spec.key] = result
                continue
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / "run_config.json", record)
        start = time.perf_counter()
        try:
            result = study.execute(spec, config, run_dir)
        except DataUnavailableError as error:
            skipped[spec.key] = str(error).splitlines()[0]
            (run_dir / "run_config.json").unlink(missing_ok=True)
            if not any(run_dir.iterdir()):
                run_dir.rmdir()
            continue
        result = {**result, **record, "key": spec.key, "wall_seconds": time.perf_counter() - start}
        _write_json(done, result)
        results[spec.key] = json.loads(done.read_text())  # as a resumed study sees it
    if unchecked:
        print(
            f"{study.name}: reused {len(unchecked)} run(s) recorded without their full configuration "
            f"({', '.join(unchecked)}): their settings match, study-level values could not be compared; "
            "delete their directories under runs/ to run them again."
        )
    if skipped:
        reasons = sorted(set(skipped.values()))
        print(f"{study.name}: skipped {len(skipped)} of {len(specs)} runs, their data is unavailable here: " + " ".join(reasons))
    study.summarize(config, results, output_dir)
    return results
