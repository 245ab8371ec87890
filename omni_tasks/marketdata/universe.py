"""The default universe: about 100 liquid US stocks and ETFs, replaceable by a file or a setting."""

from __future__ import annotations

from pathlib import Path

from omni_tasks.contracts.bars import check_symbol

DEFAULT_UNIVERSE: tuple[str, ...] = (
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "GOOG", "META", "TSLA", "BRK.B", "AVGO",
    "JPM", "LLY", "V", "UNH", "XOM", "MA", "JNJ", "PG", "HD", "COST",
    "ABBV", "MRK", "CVX", "WMT", "KO", "PEP", "BAC", "ADBE", "CRM", "NFLX",
    "AMD", "TMO", "ORCL", "ACN", "MCD", "CSCO", "ABT", "LIN", "DHR", "WFC",
    "DIS", "INTU", "TXN", "VZ", "PM", "CMCSA", "NEE", "AMGN", "IBM", "QCOM",
    "CAT", "UNP", "GE", "HON", "SPGI", "LOW", "AMAT", "RTX", "BA", "GS",
    "INTC", "NKE", "PFE", "T", "BKNG", "SBUX", "MS", "BLK", "ELV", "DE",
    "PLD", "AXP", "MDT", "LMT", "ISRG", "GILD", "ADI", "SYK", "TJX", "MMC",
    "C", "CVS", "MDLZ", "VRTX", "REGN", "ADP", "SCHW", "CB", "MO", "ZTS",
    "SPY", "QQQ", "IWM", "DIA", "XLF", "XLE", "XLK", "TLT", "GLD", "HYG",
)


def parse_symbols(text: str) -> list[str]:
    """Comma/space/newline separated symbols, validated and de-duplicated in order ('#' starts a comment)."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for part in line.replace(",", " ").split():
            symbol = check_symbol(part)
            if symbol not in out:
                out.append(symbol)
    return out


def load_universe(file: Path | None = None, symbols: list[str] | None = None) -> list[str]:
    """The universe from a file, else from a list, else the default. An empty result is an error."""
    if file is not None:
        try:
            universe = parse_symbols(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"cannot read the universe file {file}: {exc.strerror}") from None
        if not universe:
            raise ValueError(f"the universe file {file} lists no symbols")
        return universe
    if symbols:
        return parse_symbols(",".join(symbols))
    return list(DEFAULT_UNIVERSE)
