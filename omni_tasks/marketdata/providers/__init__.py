"""Provider adapters: each turns one provider's wire format into canonical bars.

One package per vendor (``alpaca``, ``alpha_vantage``, ``yahoo``), each with its ``client`` (I/O),
``requests`` (request building) and ``mappings`` (wire keys and errors); the router loads
``<vendor>.client`` and calls its ``from_settings``. ``base`` is the contract; ``synthetic`` and
``replay`` are the offline feeds.
"""
