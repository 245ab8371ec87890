"""Trading: the broker adapters, the orders path and its pre-trade checks (DESIGN sections 7 and 8)."""
