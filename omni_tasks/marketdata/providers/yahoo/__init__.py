"""Yahoo Finance (through yfinance): the client, request building and wire-key mappings."""
