"""The speed-ups a user can switch off or on by name, to measure what each buys or to rule one out.

EXPERTKIT_SPEED_OFF=packed,attention expertkit serve ...     # what train/speed.py and model/packed.py turn on
EXPERTKIT_SPEED_ON=split expertkit train ...                  # what is off unless asked for
"""

from __future__ import annotations

import os


def switched(which: str) -> set[str]:
    """The names in EXPERTKIT_SPEED_<which> (OFF or ON), a comma list."""
    return {s.strip() for s in os.environ.get(f"EXPERTKIT_SPEED_{which}", "").split(",") if s.strip()}
