"""The contracts are the floor the domain packages stand on: they import nothing of the project but core and each other."""

from __future__ import annotations

import subprocess
import sys

import pytest

CONTRACTS = ["bars", "feeds", "quotes", "portfolio", "venue"]


@pytest.mark.parametrize("name", CONTRACTS)
def test_a_contract_loads_only_core_and_contracts(name: str) -> None:
    code = (
        f"import sys, omni_tasks.contracts.{name}\n"
        "bad = sorted(m for m in sys.modules if m.startswith('omni_tasks.')"
        " and not m.startswith(('omni_tasks.core', 'omni_tasks.contracts')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"omni_tasks.contracts.{name} pulls in {out}"


def test_every_venue_says_whether_it_keeps_our_ledger() -> None:
    from omni_tasks.contracts.venue import Venue
    from omni_tasks.trading.alpaca_paper import AlpacaPaperVenue
    from omni_tasks.trading.simulated import SimulatedVenue

    assert "keeps_ledger" in Venue.__annotations__
    assert AlpacaPaperVenue.keeps_ledger is False
    assert callable(SimulatedVenue.publish_book)
