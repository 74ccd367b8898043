"""Cost estimates: each provisioning model reads its own price column, and a model the table
has no price for says so instead of borrowing another model's rate."""

from __future__ import annotations

import pytest

from survival.instance_spec import MachineSpec
from survival.pricing import load_table, rate
from survival.report import cost_line


def machine(provisioning: str) -> MachineSpec:
    return MachineSpec(
        zone="us-central1-a", machine_type="n1-standard-4", gpu_type="nvidia-tesla-t4",
        gpu_count=1, provisioning=provisioning, image="img", disk_size_gb=50,
        service_account="default", scopes=(),
    )  # fmt: skip


@pytest.mark.parametrize(("provisioning", "column"), [
    ("spot", "spot"), ("preemptible", "spot"), ("standard", "on_demand"),
])  # fmt: skip
def test_each_model_bills_at_its_own_column(provisioning, column):
    table = load_table()
    want = (
        table["machine_types"]["n1-standard-4"][column] + table["gpus"]["nvidia-tesla-t4"][column]
    )
    got = rate("n1-standard-4", "nvidia-tesla-t4", 1, provisioning)
    assert got.known and got.usd_per_hour == pytest.approx(want)


def test_flex_start_without_a_price_says_so_instead_of_using_the_spot_rate():
    assert not rate("n1-standard-4", "nvidia-tesla-t4", 1, "flex-start").known
    line = cost_line(machine("flex-start"), 3600.0)
    assert line.startswith("cost: no flex-start price for n1-standard-4/nvidia-tesla-t4")
    assert "% less" not in line
