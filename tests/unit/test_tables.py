"""Tables: Markdown cells stay cells (a '|' inside one is escaped), the best value is bolded, CSV round-trips."""

from __future__ import annotations

import csv
import io

from relscope.reports.tables import to_csv, to_markdown


def test_a_pipe_inside_a_cell_does_not_split_the_markdown_row():
    rows = [{"head": "26.5", "top tokens": "' answer' | ' Answer'", "score": 0.5},
            {"head": "22.7", "top tokens": "'yes'", "score": 0.7}]
    lines = to_markdown(rows, bold_best="score").splitlines()
    assert lines[2] == "| 26.5 | ' answer' \\| ' Answer' | 0.5000 |"
    assert lines[3].endswith("| **0.7000** |")
    assert all(line.replace("\\|", "").count("|") == 4 for line in lines)


def test_a_pipe_inside_a_column_name_is_escaped_too():
    header = to_markdown([{"mean |IE| top-20": 0.5}]).splitlines()[0]
    assert header == "| mean \\|IE\\| top-20 |"


def test_csv_keeps_the_cell_whole():
    rows = [{"a": "x | y, z", "b": 1.0}]
    assert list(csv.DictReader(io.StringIO(to_csv(rows)))) == [{"a": "x | y, z", "b": "1.0000"}]
