"""Who answers the loop's questions: "does pixel (x, y) lie on instance ``ann_id``?".

The loop asks an :class:`Oracle`; by default the simulated one that reads the GT masks
(:class:`apis.data.simulated_oracle.SimulatedOracle`), or a person behind a UI. Labels: 1 = on the object,
0 = background, -1 = unsure (ignored by the point loss). Points are integer pixel indices ``(x, y)`` in
the original image (x = column, y = row). What an answer costs is set in the config (``oracle.*``) and
recorded with it in the ledger; docs/design.md ("The method") gives the costs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Oracle(Protocol):
    """Anything that labels points: the simulated oracle, or a person behind a UI."""

    name: str

    def answer(self, ann_id: int, x: int, y: int) -> int:
        """1 (on the object), 0 (background) or -1 (unsure) for pixel ``(x, y)`` of instance ``ann_id``."""
        ...
