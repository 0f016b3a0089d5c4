"""Write Python values as HCL2 literals, escaped and laid out as `packer fmt` would."""

from __future__ import annotations

import re
from typing import Any

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_SIMPLE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def string(value: str) -> str:
    """A quoted HCL string whose value is exactly `value`: no interpolation, no directives."""
    out = []
    for char in value:
        if char in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    # Template sequences: "${" and "%{" start interpolation and directives; doubling escapes them.
    return '"' + "".join(out).replace("${", "$${").replace("%{", "%%{") + '"'


def unstring(literal: str) -> str:
    """The value of a quoted HCL string as python-hcl2 returns it (quotes stripped, escapes kept)."""
    return literal.replace("$${", "${").replace("%%{", "%{")


def key(name: str) -> str:
    return name if _IDENTIFIER.match(name) else string(name)


def value(data: Any, indent: int = 0) -> str:
    """An HCL expression for a JSON-like value; maps and lists of maps span lines."""
    if isinstance(data, bool):
        return "true" if data else "false"
    if isinstance(data, (int, float)):
        return repr(data)
    if data is None:
        return "null"
    if isinstance(data, str):
        return string(data)
    if isinstance(data, (list, tuple)):
        return "[" + ", ".join(value(item, indent) for item in data) + "]"
    if isinstance(data, dict):
        if not data:
            return "{}"
        pad = " " * (indent + 2)
        keys = [key(str(k)) for k in data]
        width = max(len(k) for k in keys)
        lines = [f"{pad}{k.ljust(width)} = {value(v, indent + 2)}" for k, v in zip(keys, data.values())]
        return "{\n" + "\n".join(lines) + "\n" + " " * indent + "}"
    raise TypeError(f"no HCL form for {type(data).__name__}")


def type_of(data: Any) -> str:
    """The HCL type constraint of a value, for a `variable` block."""
    if isinstance(data, bool):
        return "bool"
    if isinstance(data, (int, float)):
        return "number"
    if isinstance(data, str):
        return "string"
    if isinstance(data, (list, tuple)):
        return "list(string)"
    if isinstance(data, dict):
        return "map(string)"
    raise TypeError(f"no HCL type for {type(data).__name__}")


def attributes(items: dict[str, Any], indent: int = 0) -> str:
    """`name = value` lines with the `=` aligned across each run of single-line values."""
    lines: list[str] = []
    group: list[tuple[str, str]] = []

    def flush() -> None:
        width = max((len(name) for name, _ in group), default=0)
        lines.extend(f"{' ' * indent}{name.ljust(width)} = {text}" for name, text in group)
        group.clear()

    for name, item in items.items():
        text = value(item, indent)
        if "\n" in text:  # a multi-line value stands alone, as hclwrite aligns it
            flush()
            lines.append(f"{' ' * indent}{key(name)} = {text}")
        else:
            group.append((key(name), text))
    flush()
    return "\n".join(lines)
