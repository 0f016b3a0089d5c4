"""Load YAML input files into pydantic models with one-line, line-numbered errors.

Every problem becomes an `InputError` whose text is
`FILE:LINE: field.path: what is wrong (how to fix)`; the CLI prints it and exits 2.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.reader import ReaderError
from pydantic import BaseModel, ValidationError

from imagebuilder.errors import UserError
from imagebuilder.textline import one_line

ModelT = TypeVar("ModelT", bound=BaseModel)

# libyaml's parser when PyYAML was built with it: the same nodes and marks, much faster.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Input files are small (a matrix is a few kilobytes); these bound what a bad file can cost.
MAX_FILE_BYTES = 4 * 1024 * 1024
# A document with more nodes than this, written out or through aliases (an alias bomb), is not a matrix.
MAX_EXPANDED_NODES = 100_000

Loc = tuple[str | int, ...]


class InputError(UserError):
    """A problem in a user's input file, already phrased as one line."""

    def __init__(self, file: Path | str, line: int, field_path: str, problem: str, fix: str = "") -> None:
        self.file = str(file)
        self.line = line
        self.field_path = field_path
        self.problem = problem
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.file}:{self.line}:"
        what = f" {self.field_path}:" if self.field_path else ""
        fix = f" ({self.fix})" if self.fix else ""
        return f"{where}{what} {self.problem}{fix}"


@dataclass
class SourceMap:
    """Where each value of a YAML document stands, and the raw text of scalars."""

    file: str
    lines: dict[Loc, int] = field(default_factory=dict)
    raw_scalars: dict[Loc, str] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 1

    def error(self, loc: Loc, problem: str, fix: str = "") -> InputError:
        return InputError(self.file, self.line_of(loc), dotted(loc), problem, fix)


def dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'?"
    return "choose one of: " + ", ".join(str(c) for c in choices)


def _node_counts(root: yaml.Node) -> tuple[int, int]:
    """Nodes the document holds as written, and the nodes it expands to counting each alias use
    (capped just above the limit), without expanding it."""
    memo: dict[int, int] = {}
    order: list[yaml.Node] = []
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in memo:
            continue
        if children_done:
            order.append(node)
            memo[id(node)] = -1
            continue
        stack.append((node, True))
        for child in _children(node):
            if id(child) not in memo:
                stack.append((child, False))
    sizes: dict[int, int] = {}
    for node in order:
        total = 1 + sum(sizes.get(id(child), 1) for child in _children(node))
        sizes[id(node)] = min(total, MAX_EXPANDED_NODES + 1)
    return len(order), sizes.get(id(root), 1)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _map_node(node: yaml.Node, loc: Loc, source: SourceMap, depth: int = 0) -> None:
    if depth > 64:
        raise source.error(loc, "nesting is deeper than 64 levels", "flatten the structure")
    source.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.ScalarNode):
        source.raw_scalars.setdefault(loc, node.value)
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            _map_node(child, loc + (index,), source, depth + 1)
    elif isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            if key in seen:
                raise InputError(source.file, key_node.start_mark.line + 1, dotted(loc + (key,)),
                                 "key given twice", "keep one of them")
            seen.add(key)
            source.lines[loc + (key,)] = key_node.start_mark.line + 1
            _map_node(value_node, loc + (key,), source, depth + 1)


def read_yaml(path: Path) -> tuple[Any, SourceMap]:
    """Parse a YAML file safely; return the data and where each value stands."""
    name = str(path)
    text = _read_text(path, name)
    if not text.strip():
        raise InputError(name, 1, "", "the file is empty", "see README.md for the format")
    source = SourceMap(name)
    try:
        loader = _LOADER(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise InputError(name, 1, "", "the file holds no YAML document", "see README.md for the format")
            _check_size(node, name)
            _map_node(node, (), source)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, text, name) from None
    except ReaderError as exc:
        line = text[:exc.position].count("\n") + 1
        raise InputError(name, line, "", f"character U+{exc.character:04X} is not allowed in YAML",
                         "remove it or write it as an escape in a double-quoted string") from None
    except yaml.YAMLError as exc:
        problem = one_line(exc)
        raise InputError(name, 1, "", f"YAML error: {problem}", "fix the YAML syntax") from None
    except RecursionError:
        raise InputError(name, 1, "", "the document is nested too deeply", "flatten the structure") from None
    return data, source


def _read_text(path: Path, name: str) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(name, 1, "", f"the file is {size} bytes, more than the {MAX_FILE_BYTES} an input may have",
                             "trim it; input files are a few kilobytes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(name, 1, "", "file not found", "create it or pass the right path") from None
    except OSError as exc:
        raise InputError(name, 1, "", f"cannot read the file: {exc.strerror or exc.__class__.__name__}",
                         "check its permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(name, line, "", f"byte 0x{data[exc.start]:02x} is not UTF-8",
                         "save the file as UTF-8") from None


def _check_size(root: yaml.Node, name: str) -> None:
    written, expanded = _node_counts(root)
    if written > MAX_EXPANDED_NODES:
        raise InputError(name, root.start_mark.line + 1, "",
                         f"the document is too big: it holds more than {MAX_EXPANDED_NODES} values",
                         "trim it; a matrix lists a few OSes, minors and clouds")
    if expanded > MAX_EXPANDED_NODES:
        raise InputError(name, root.start_mark.line + 1, "",
                         f"the document expands to more than {MAX_EXPANDED_NODES} values through aliases",
                         "write the values out instead of nesting aliases")


def _syntax_error(exc: yaml.MarkedYAMLError, text: str, name: str) -> InputError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 1
    tab_line = _tab_indented_line(text, line)
    if tab_line:
        return InputError(name, tab_line, "", "a tab in the indentation",
                          "indent with spaces; YAML does not allow tabs there")
    problem = (exc.problem or exc.context or "invalid YAML").strip()
    return InputError(name, line, "", f"YAML syntax error: {problem}", "fix the YAML syntax at that line")


def _tab_indented_line(text: str, error_line: int) -> int | None:
    """The line, at or before a syntax error, whose indentation holds a tab (the likely cause)."""
    lines = text.splitlines()
    for number in range(min(error_line, len(lines)), 0, -1):
        content = lines[number - 1]
        indent = content[:len(content) - len(content.lstrip(" \t"))]
        if "\t" in indent and content.strip():
            return number
    return None


_TYPE_FIXES = {
    "list_type": "write a YAML list, e.g. [a, b]",
    "dict_type": "write a mapping, e.g. {key: value}",
    "model_type": "write a mapping, e.g. {key: value}",
    "model_attributes_type": "write a mapping, e.g. {key: value}",
    "string_type": "write a string in quotes",
    "int_type": "write a whole number",
    "int_parsing": "write a whole number",
    "int_from_float": "write a whole number",
    "bool_type": "write true or false",
    "bool_parsing": "write true or false",
}
_VALUE_FIXES = {
    "greater_than_equal": "raise the value",
    "less_than_equal": "lower the value",
    "too_long": "shorten it",
    "too_short": "add at least one item",
}


def pydantic_problem(error: dict[str, Any], source: SourceMap, model: type[BaseModel], at: Loc = ()) -> InputError:
    """One pydantic error as an InputError; `at` is where the validated value stands in the file."""
    loc: Loc = at + tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, tuple(error["loc"])[:-1])
        return source.error(loc, f"unknown key '{loc[-1]}'", did_you_mean(str(loc[-1]), allowed) if allowed else "remove it")
    if kind == "missing":
        return source.error(loc, "required field is missing", f"add '{loc[-1]}'")
    message = error.get("msg", "invalid value")
    if kind in _TYPE_FIXES:
        got = type(error.get("input")).__name__
        return source.error(loc, f"{message[0].lower()}{message[1:]}, got {got}", _TYPE_FIXES[kind])
    if kind == "literal_error":
        return source.error(loc, f"'{error.get('input')}' is not allowed", message.replace("Input should be", "use"))
    message = message[0].lower() + message[1:]
    if message.startswith("value error, "):
        message = message.removeprefix("value error, ")
    problem, _, fix = message.partition(" | fix: ")
    problem = problem.replace("{raw}", source.raw_scalars.get(loc, str(error.get("input"))))
    return source.error(loc, problem, fix or _VALUE_FIXES.get(kind) or "correct the value")


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the sub-model at loc, for did-you-mean on unknown keys."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            current = _inner_model(current, item=True)
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None:
            current = _inner_model(current, item=True)
            continue
        info = next((f for n, f in fields.items() if (f.alias or n) == part), None)
        current = _inner_model(info.annotation, item=False) if info else None
    fields = getattr(current, "model_fields", None) or {}
    return [info.alias or name for name, info in fields.items()]


def _inner_model(annotation: Any, item: bool) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg, item)
        if found is not None:
            return found
    return None


def validate(data: Any, source: SourceMap, model: type[ModelT], context: dict[str, Any] | None = None) -> ModelT:
    try:
        return model.model_validate(data, context={"source": source, **(context or {})})
    except ValidationError as exc:
        raise pydantic_problem(exc.errors()[0], source, model) from None


def load_model(path: Path, model: type[ModelT], context: dict[str, Any] | None = None) -> ModelT:
    data, source = read_yaml(path)
    if not isinstance(data, dict):
        raise InputError(source.file, 1, "", f"expected a mapping at the top, got {type(data).__name__}",
                         "see README.md for the format")
    return validate(data, source, model, context)
