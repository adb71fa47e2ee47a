"""How numbers are written in the Markdown digests, the console and the CSV tables (one place for each)."""
from __future__ import annotations

import math


def number(v, digits: int = 4) -> str:
    """Tables and console: ``-`` for None, ``NaN``, fixed point unless very small or large (then ``%g``)."""
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4) else f"{v:.{digits}f}"
    return str(v)


def p_value(v) -> str:
    """``0.012``, ``3.4e-05``; ``NaN`` for an undefined p."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def csv_cell(v):
    """CSV: floats at full precision (``repr``), ``nan`` for NaN; anything else as it is."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v
