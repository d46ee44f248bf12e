"""ESP adapters: one module per ESP behind the protocol in ``base``."""
