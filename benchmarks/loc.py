"""The PRD's CRUD-code metric: lines of code of the product repository, by hand vs with the kit.

    python -m benchmarks.loc              # a plain report
    python -m benchmarks.loc --markdown   # the table in docs/benchmarks.md

Lines are counted from Python's own tokenizer: a line counts when it holds part of a token
of code. Comments, blank lines, docstrings and other statements made of a string alone are
not code; every line of a multi-line string that is part of code (an argument, a value) is.

What is compared is what differs between the two ways of writing the same repository, which
both pass the kit's ``RepositoryContract`` (tests/test_crud_equivalence.py):

- before: ``benchmarks/handwritten_product.py``, the product repository written on Peewee;
- after: ``plugins/czo-product/czo_product/repository.py``, the product module's repository
  built with the kit (including its ``slugify`` helper and typed input, which the hand-written
  one has no counterpart for, so the comparison errs against the kit).

Not counted on either side, because both use them unchanged: the ``Product`` model
(``models.py``), its event types (``events.py``) and the plugin that registers them
(``plugin.py``); nor the kit itself, which the "after" side imports.
"""

from __future__ import annotations

import argparse
import io
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Count", "count_code_lines", "count_file", "main"]

ROOT = Path(__file__).resolve().parent.parent
BEFORE = ROOT / "benchmarks" / "handwritten_product.py"
AFTER = ROOT / "plugins" / "czo-product" / "czo_product" / "repository.py"

# Tokens that never make a line code: layout, comments, and the file's start and end.
_LAYOUT = {
    tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
    tokenize.ENCODING, tokenize.ENDMARKER,
}
# Python 3.12 splits f-strings into several tokens; a statement of only these is a bare string.
_STRING_PARTS = {tokenize.STRING} | {
    getattr(tokenize, name) for name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
    if hasattr(tokenize, name)
}


def _is_string_part(token: tokenize.TokenInfo) -> bool:
    return token.type in _STRING_PARTS or (token.type == tokenize.OP and token.string in ("(", ")"))


@dataclass(frozen=True)
class Count:
    """Physical lines of one file, and how many of them are code."""

    path: str
    lines: int
    code: int


def count_code_lines(source: str, *, name: str = "<source>") -> int:
    """How many lines of ``source`` hold code (see the module docstring for what counts).

    ``ValueError`` naming ``name`` if the tokenizer cannot read it.
    """
    code_lines: set[int] = set()
    statement: list[tokenize.TokenInfo] = []

    def close_statement() -> None:
        # A logical line made only of strings (maybe in parentheses) is a docstring or a bare
        # string: not code.
        if statement and not all(_is_string_part(token) for token in statement):
            for token in statement:
                code_lines.update(range(token.start[0], token.end[0] + 1))
        statement.clear()

    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NEWLINE or token.type == tokenize.ENDMARKER:
                close_statement()
            elif token.type not in _LAYOUT:
                statement.append(token)
    except (tokenize.TokenError, SyntaxError) as exc:
        raise ValueError(f"{name}: cannot count its lines, the tokenizer stopped: {exc}") from None
    close_statement()
    return len(code_lines)


def count_file(path: Path) -> Count:
    """The ``Count`` of one Python file."""
    text = path.read_text(encoding="utf-8")
    shown = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return Count(shown, len(text.splitlines()), count_code_lines(text, name=shown))


def reduction(before: int, after: int) -> float:
    """The share of the "before" code that the "after" side does without (0.7 is -70%)."""
    if before <= 0:
        raise ValueError(f"before must have at least one line of code, got {before}")
    return 1 - after / before


def report(before: Count, after: Count, *, markdown: bool) -> str:
    change = reduction(before.code, after.code)
    verdict = "met" if change >= 0.70 else "not met"
    if markdown:
        return "\n".join([
            "| side | file | lines | code lines |",
            "|---|---|---:|---:|",
            f"| before: by hand on Peewee | `{before.path}` | {before.lines} | {before.code} |",
            f"| after: with the kit | `{after.path}` | {after.lines} | {after.code} |",
            "",
            f"CRUD code: {before.code} → {after.code} code lines, **-{change:.0%}** "
            f"(PRD target -70%: {verdict}).",
        ])
    return "\n".join([
        "Product repository, code lines (tokenizer count: no comments, docstrings or blank lines)",
        f"  before (by hand on Peewee): {before.code:5d}   {before.path} ({before.lines} lines in all)",
        f"  after  (with the kit):      {after.code:5d}   {after.path} ({after.lines} lines in all)",
        f"  reduction: -{change:.0%} (PRD target -70%: {verdict})",
        "Both pass czo_kit.testing.RepositoryContract (tests/test_crud_equivalence.py).",
        "Not counted on either side, as both use them unchanged: the Product model, its event",
        "types and the plugin module that registers them; nor the kit itself.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loc", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the table of docs/benchmarks.md")
    args = parser.parse_args(argv)
    print(report(count_file(BEFORE), count_file(AFTER), markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
