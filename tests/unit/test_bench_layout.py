"""The benchmarks' layouts (bench/_rig.py): the shipped one is what queues/*.toml start, so a figure
labelled "shipped" is what `fleet up` runs."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The benchmarks run as scripts from bench/ and import their helpers as `_rig`: the same here.
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))
from _rig import SAME, layout, shipped_layout  # noqa: E402


def _pool(queue: str) -> tuple[str, int]:
    spec = tomllib.loads((ROOT / "queues" / f"{queue}.toml").read_text())
    return spec["pool"], spec["concurrency"]


def test_shipped_layout_is_the_router_and_tier_queue_files() -> None:
    shipped = layout("shipped")

    assert shipped == shipped_layout()
    assert shipped.router == _pool("router")
    assert shipped.tiers == _pool("mini")
    # docs/performance.md and the benchmarks' help name these pools: they change together.
    assert shipped.describe() == "router threads x 2, tiers asyncio x 16"


def test_same_layout_is_bare_celerys_prefork_x_2() -> None:
    assert layout("same") is SAME
    assert SAME.describe() == "router prefork x 2, tiers prefork x 2"
