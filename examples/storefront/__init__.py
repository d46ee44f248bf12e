"""An example storefront (Flask) that embeds the espbridge SDK. See README.md here for how to run it."""

from .app import create_app
from .catalog import CATALOG, CURRENCY, Item

__all__ = ["CATALOG", "CURRENCY", "Item", "create_app"]
