"""Byte-stable YAML: insertion order kept, no anchors or aliases, no line folding, LF endings."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    # PyYAML writes &id001/*id001 when one object appears twice in a document; refuse that,
    # every occurrence is written out in full.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line strings (an ini file in Compose's `configs: content:`) as literal blocks.
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def dump(data: Any, header: str = "") -> str:
    """YAML text with header as leading comment lines."""
    body = yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=10_000, allow_unicode=True, indent=2
    )
    return comment(header) + body


def comment(text: str) -> str:
    """Text as `# ` comment lines (empty when text is)."""
    return "".join(f"# {line}".rstrip() + "\n" for line in text.strip("\n").splitlines()) if text else ""
