"""Plain-text tables for the benchmarks' reports."""

from __future__ import annotations


def print_rows(rows: list[tuple[str, ...]]) -> None:
    """The rows as left-aligned columns, indented two spaces; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
