"""Alpaca market data: the client (alpaca-py's historical bars client), request building and wire-key mappings."""
