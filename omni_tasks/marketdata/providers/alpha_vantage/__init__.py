"""Alpha Vantage: the bars client, the news-sentiment client, their request building and wire-key mappings."""
