"""Cost ESTIMATES from the small dated price table in survival/data/prices.json.

Spot and legacy preemptible VMs bill at the spot rate; standard VMs at the on-demand rate;
flex-start VMs at their own discounted rate, which the table holds only where a row has a
``flex_start`` price (none yet: the summary then says there is no price rather than guess). The
table is a snapshot (see its ``as_of``), labelled as an estimate wherever it is shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PRICE_TABLE = Path(__file__).resolve().parent / "data" / "prices.json"
SECONDS_PER_HOUR = 3600.0
# The price column of each provisioning model (spot and preemptible: "spot").
PRICE_KIND = {"standard": "on_demand", "flex-start": "flex_start"}


@dataclass(frozen=True)
class Rate:
    """USD per hour for one VM shape: what we pay (``model``) and the on-demand equivalent."""

    usd_per_hour: float
    on_demand_usd_per_hour: float
    as_of: str
    known: bool

    def cost(self, seconds: float) -> float:
        return self.usd_per_hour * seconds / SECONDS_PER_HOUR

    def on_demand_cost(self, seconds: float) -> float:
        return self.on_demand_usd_per_hour * seconds / SECONDS_PER_HOUR


@cache
def load_table(path: Path = PRICE_TABLE) -> dict:
    return json.loads(path.read_text())


def rate(machine_type: str, gpu_type: str, gpu_count: int, provisioning: str) -> Rate:
    """The hourly rate of this shape; ``known`` is False when a part is missing from the table."""
    table = load_table()
    kind = PRICE_KIND.get(provisioning, "spot")
    machine = table["machine_types"].get(machine_type) or {}
    gpu = table["gpus"].get(gpu_type) or {} if gpu_count else {kind: 0.0, "on_demand": 0.0}
    known = kind in machine and kind in gpu and "on_demand" in machine and "on_demand" in gpu
    return Rate(
        usd_per_hour=machine.get(kind, 0.0) + gpu_count * gpu.get(kind, 0.0),
        on_demand_usd_per_hour=machine.get("on_demand", 0.0)
        + gpu_count * gpu.get("on_demand", 0.0),
        as_of=table["as_of"],
        known=known,
    )
