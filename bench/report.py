"""Results into a markdown file: each bench owns a section between its own markers."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, name: str, result: str) -> None:
    """Replace `<!-- name -->` … `<!-- /name -->` in `path` with `result` (append if absent)."""
    text = path.read_text()
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{result}\n{end}"
    if start in text and end in text:
        text = text.split(start)[0] + block + text.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
