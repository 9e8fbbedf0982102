"""Tables as text: pandas writes the markdown (through tabulate, columns aligned) and the CSV of every table the
report, the sweep and the benchmarks print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def frame(header: list[str], rows: list[list[Any]]) -> pd.DataFrame:
    """Rows under a header, every cell as the text it prints as."""
    return pd.DataFrame([[str(v) for v in r] for r in rows], columns=header, dtype=object)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table, one line per row, cells as given (no number formatting of tabulate's own)."""
    return frame(header, rows).to_markdown(index=False, tablefmt="github", disable_numparse=True) + "\n"


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    """Rows (dicts keyed by the header) as a CSV file with Excel's line ends, as Python's csv module writes."""
    pd.DataFrame(rows, columns=header, dtype=object).to_csv(path, index=False, lineterminator="\r\n")
