"""Cost ESTIMATES from the small dated price table in survival/data/prices.json.

Spot and legacy preemptible VMs bill at the spot rate; standard VMs at the on-demand rate. The
table is a snapshot (see its ``as_of``), labelled as an estimate wherever it is shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PRICE_TABLE = Path(__file__).resolve().parent / "data" / "prices.json"
SECONDS_PER_HOUR = 3600.0


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
    kind = "on_demand" if provisioning == "standard" else "spot"
    machine = table["machine_types"].get(machine_type)
    gpu = table["gpus"].get(gpu_type) if gpu_count else {"on_demand": 0.0, "spot": 0.0}
    known = machine is not None and gpu is not None
    machine = machine or {"on_demand": 0.0, "spot": 0.0}
    gpu = gpu or {"on_demand": 0.0, "spot": 0.0}
    return Rate(
        usd_per_hour=machine[kind] + gpu_count * gpu[kind],
        on_demand_usd_per_hour=machine["on_demand"] + gpu_count * gpu["on_demand"],
        as_of=table["as_of"],
        known=known,
    )
