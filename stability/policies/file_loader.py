"""Filling a config dataclass from a TOML, JSON or YAML file (YAML when PyYAML is installed), strictly.

Every key must be a field of the dataclass (nested dataclasses are tables), every value of the field's type;
the dataclass's own `__post_init__` checks the rest. Whatever is wrong is refused with the file's line of the
key it is about, before anything is built: `file:line: what is wrong`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path


class ConfigFileError(ValueError):
    """A config file that cannot be used: `file:line: what is wrong`."""

    def __init__(self, path, line: int | None, message: str):
        self.path, self.line, self.message = str(path), line, message
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


def load_dataclass_file(path: str | Path, cls, error: type[ConfigFileError] = ConfigFileError, kind: str = "config"):
    """`cls` filled from the file at `path` (its type from the suffix), or `error` (a ConfigFileError) raised;
    `kind` names the file in messages ("unknown policy file type")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(path, None, f"cannot read ({e})") from None
    fmt = _format(path, error, kind)
    data, locate = _parse(path, text, fmt, error, kind)
    if not isinstance(data, dict):
        raise error(path, 1, "the file must hold a table/object of sections")
    try:
        return _build(cls, data, ())
    except _FieldError as e:
        raise error(path, locate(e.path), e.message) from None


def _format(path: Path, error, kind: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return "toml"
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    raise error(path, None, f"unknown {kind} file type {suffix or '(none)'!r}; use .toml, .json or .yaml")


def _parse(path: Path, text: str, fmt: str, error, kind: str):
    """(data, locate) where locate(key_path) -> line number of that key (or of its nearest parent)."""
    if fmt == "toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"line (\d+)", str(e))
            raise error(path, int(m.group(1)) if m else None, f"not valid TOML: {e}") from None
        return data, _lines_locator(_toml_key_lines(text))
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise error(path, e.lineno, f"not valid JSON: {e.msg}") from None
        return data, _lines_locator(_json_key_lines(text))
    try:
        import yaml
    except ImportError:
        raise error(path, None, f"YAML {kind} files need PyYAML (pip install pyyaml); "
                                          "or use TOML/JSON") from None
    loader = _yaml_loader(yaml)
    try:
        node = yaml.compose(text, Loader=loader)
        data = yaml.load(text, Loader=loader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise error(path, mark.line + 1 if mark else None, f"not valid YAML: {e}") from None
    return (data if data is not None else {}), _lines_locator(_yaml_key_lines(node))


def _yaml_loader(yaml):
    """SafeLoader without YAML 1.1's on/off/yes/no booleans: `on: [warning]` is our key, not True."""
    class Loader(yaml.SafeLoader):
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {
        ch: [(tag, rx) for tag, rx in resolvers if tag != bool_tag]
        for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return Loader


def _lines_locator(lines: dict[tuple, int]):
    def locate(key_path: tuple) -> int | None:
        for n in range(len(key_path), 0, -1):
            if key_path[:n] in lines:
                return lines[key_path[:n]]
        return 1 if lines else None
    return locate


def _toml_key_lines(text: str) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    table: tuple = ()
    for i, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if m:
            table = tuple(p.strip().strip('"') for p in m.group(1).split("."))
            out.setdefault(table, i)
            continue
        m = re.match(r"\s*([A-Za-z0-9_\-\".]+)\s*=", line)
        if m:
            key = table + tuple(p.strip().strip('"') for p in m.group(1).split("."))
            for n in range(1, len(key) + 1):
                out.setdefault(key[:n], i)
    return out


def _json_key_lines(text: str) -> dict[tuple, int]:
    """Line of every object key, by its path (a small scanner: json gives no positions)."""
    out: dict[tuple, int] = {}
    stack: list = []      # per open container: [current key] for objects, None for arrays
    line, i, n = 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c in "{[":
            stack.append([None] if c == "{" else None)
        elif c in "}]":
            if stack:
                stack.pop()
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            s = text[i + 1 : j]
            k = j + 1
            while k < n and text[k] in " \t\r\n":
                k += 1
            if k < n and text[k] == ":" and stack and stack[-1] is not None:
                stack[-1][0] = s
                out.setdefault(tuple(e[0] for e in stack if e is not None), line)
            i = j
        i += 1
    return out


def _yaml_key_lines(node, prefix: tuple = ()) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    if node is None or not hasattr(node, "value") or not isinstance(node.value, list):
        return out
    for item in node.value:
        if isinstance(item, tuple):  # a mapping's (key node, value node)
            k, v = item
            key = prefix + (str(k.value),)
            out.setdefault(key, k.start_mark.line + 1)
            out.update({p: ln for p, ln in _yaml_key_lines(v, key).items() if p not in out})
    return out


# -- validation -----------------------------------------------------------------------------------------------
class _FieldError(Exception):
    def __init__(self, path: tuple, message: str):
        self.path, self.message = path, message


def _build(cls, data: dict, path: tuple):
    """cls(**data) with every key and type checked first, errors carrying the key's path."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    where = ".".join(path)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            key, known = str(key), ", ".join(fields)
            raise _FieldError(path + (key,), f"unknown key {'.'.join(path + (key,))!r}"
                                             f"{' in [' + where + ']' if where else ''}; known: {known}")
        default = _default(fields[key])
        kwargs[key] = _check_type(default, value, path + (key,))
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise _FieldError(_blame(str(e), path, kwargs), str(e)) from None


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


def _check_type(default, value, path: tuple):
    name = ".".join(path)
    if dataclasses.is_dataclass(default):
        if not isinstance(value, dict):
            raise _FieldError(path, f"{name} must be a table of settings, got {value!r}")
        return _build(type(default), value, path)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple, str)) and all(isinstance(v, str) for v in (
            [value] if isinstance(value, str) else value))
        value = (value,) if isinstance(value, str) else tuple(value) if ok else value
    else:
        ok = True
    if not ok:
        want = "a list of names" if isinstance(default, tuple) else type(default).__name__
        raise _FieldError(path, f"{name} must be {want}, got {value!r}")
    return value


def _blame(message: str, path: tuple, kwargs: dict) -> tuple:
    """The key an error message names (`rollback.interval must be ...`), so its line can be shown."""
    for m in re.finditer(r"([a-z_]+)\.([a-z_]+)", message):
        if m.group(2) in kwargs:
            return path + (m.group(2),)
    return path
