"""Fault points: named places where a test can make this process die on purpose.

``CZO_FAULTS=events.relay`` makes ``fault_point("events.relay")`` end the process at once
(``os._exit``, no cleanup), which is how the tests prove that a crash between two steps loses
nothing. Unset, a fault point costs one dictionary lookup.
"""

from __future__ import annotations

import os

__all__ = ["fault_point"]

_EXIT_CODE = 70


def fault_point(name: str) -> None:
    """Die here if ``name`` is listed in ``CZO_FAULTS`` (comma-separated)."""
    armed = os.environ.get("CZO_FAULTS")
    if armed and name in {item.strip() for item in armed.split(",")}:
        os._exit(_EXIT_CODE)
