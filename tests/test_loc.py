"""The tokenizer-based line counter behind ``python -m benchmarks.loc`` (the CRUD-code metric)."""

from __future__ import annotations

import textwrap

import pytest

from benchmarks import loc
from benchmarks.loc import count_code_lines


def count(source: str) -> int:
    return count_code_lines(textwrap.dedent(source))


def test_blank_lines_and_comments_are_not_code() -> None:
    assert count("") == 0
    assert count("\n\n   \n") == 0
    assert count("# a comment\n    # an indented one\n") == 0
    assert count("x = 1  # a trailing comment\n\n\ny = 2\n") == 2


def test_docstrings_are_not_code() -> None:
    source = '''
        """Module docstring,
        on two lines."""

        def f():
            """Function docstring."""
            return 1


        class C:
            \'\'\'Class docstring
            over
            three lines.\'\'\'

            x = 1
    '''
    assert count(source) == 4  # def, return, class, x = 1


def test_a_bare_string_statement_anywhere_is_not_code() -> None:
    # Attribute docstrings and implicitly concatenated ones are strings alone too.
    source = '''
        x = 1
        """What x is for."""
        "one part " "and another"
        (
            "in parentheses"
        )
    '''
    assert count(source) == 1


def test_every_line_of_a_multiline_string_in_code_counts() -> None:
    source = '''
        query = """
            SELECT *
            FROM product
        """
        call(
            "a",  # comment inside a call

            b"""two
            lines""",
        )
    '''
    # query: 4 lines; call(: 1, "a": 1, the bytes literal: 2, ")": 1
    assert count(source) == 9


def test_continuation_lines_and_docstring_lookalikes_in_code() -> None:
    source = '''
        total = 1 + \\
            2
        name = "x"; "y"
        def g(): return "not a docstring"
    '''
    assert count(source) == 4


def test_f_strings_alone_are_bare_strings_and_in_code_count() -> None:
    assert count('f"{x} alone"\n') == 0
    assert count('y = f"{x} in code"\n') == 1


def test_source_the_tokenizer_cannot_read_is_a_clear_error() -> None:
    with pytest.raises(ValueError) as info:
        count_code_lines('x = """never closed\n', name="broken.py")
    assert "broken.py" in str(info.value) and "tokenizer" in str(info.value)
    with pytest.raises(ValueError) as dedent:
        count_code_lines("if x:\n        a = 1\n    b = 2\n", name="indent.py")
    assert "indent.py" in str(dedent.value)


def test_reduction_refuses_an_empty_before() -> None:
    assert loc.reduction(100, 30) == pytest.approx(0.70)
    with pytest.raises(ValueError) as info:
        loc.reduction(0, 5)
    assert "before" in str(info.value)


def test_the_report_counts_the_files_it_names(capsys: pytest.CaptureFixture[str]) -> None:
    before, after = loc.count_file(loc.BEFORE), loc.count_file(loc.AFTER)
    assert before.path == "benchmarks/handwritten_product.py"
    assert after.path == "plugins/czo-product/czo_product/repository.py"
    assert 0 < after.code < after.lines and 0 < before.code < before.lines
    assert loc.main([]) == 0
    out = capsys.readouterr().out
    assert f"{before.code:5d}   {before.path}" in out and f"{after.code:5d}   {after.path}" in out
    assert f"-{loc.reduction(before.code, after.code):.0%}" in out
    assert loc.main(["--markdown"]) == 0
    table = capsys.readouterr().out
    assert f"| {before.lines} | {before.code} |" in table and f"| {after.lines} | {after.code} |" in table


def test_the_published_figure_is_the_current_count() -> None:
    # docs/benchmarks.md publishes the count: a change to either repository must update it.
    docs = (loc.ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    before, after = loc.count_file(loc.BEFORE), loc.count_file(loc.AFTER)
    table = loc.report(before, after, markdown=True)
    assert table in docs, "docs/benchmarks.md is stale: paste `python -m benchmarks.loc --markdown` into it"
    change = f"**-{loc.reduction(before.code, after.code):.0%}**: the product repository is {before.code} code lines"
    assert change in docs, "the PRD table at the top of docs/benchmarks.md is stale"
