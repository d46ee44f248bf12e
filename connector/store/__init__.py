"""The local store: typed SQLAlchemy models split by concept, and the engine/session factory.

Every table but ``stores`` carries ``store_id``; every query in connector/ filters by it.
"""

from .base import Base, utcnow
from .commerce import Cart, CartItem, Order, OrderItem, Product, Variant, WaitlistEntry
from .compliance import Erasure, Suppression
from .consent import (
    Channel,
    ConsentConfirmation,
    ConsentEvidence,
    ConsentLedgerEntry,
    ConsentState,
    ConsentStatus,
    LedgerHead,
)
from .contacts import Contact, Identity, IdentityKind
from .db import Database, connect
from .esp import EspConnection
from .events import Event
from .outbox import OutboxRow, OutboxStatus
from .rfm import ContactLifecycle, RfmRun, RfmScore, RfmTransition
from .segments import Segment, SegmentChange, SegmentCount, SegmentMember
from .sync import (
    Engagement,
    EngagementKind,
    EspLink,
    SyncItem,
    SyncItemStatus,
    SyncKind,
    SyncRun,
    SyncRunStatus,
)
from .tenancy import AdminUser, Role, Store, WriteKey

__all__ = [
    "AdminUser",
    "Base",
    "Cart",
    "CartItem",
    "Channel",
    "ConsentConfirmation",
    "ConsentEvidence",
    "ConsentLedgerEntry",
    "ConsentState",
    "ConsentStatus",
    "Contact",
    "ContactLifecycle",
    "Database",
    "Engagement",
    "EngagementKind",
    "Erasure",
    "EspConnection",
    "EspLink",
    "Event",
    "Identity",
    "IdentityKind",
    "LedgerHead",
    "Order",
    "OrderItem",
    "OutboxRow",
    "OutboxStatus",
    "Product",
    "RfmRun",
    "RfmScore",
    "RfmTransition",
    "Role",
    "Segment",
    "SegmentChange",
    "SegmentCount",
    "SegmentMember",
    "Store",
    "Suppression",
    "SyncItem",
    "SyncItemStatus",
    "SyncKind",
    "SyncRun",
    "SyncRunStatus",
    "Variant",
    "WaitlistEntry",
    "WriteKey",
    "connect",
    "utcnow",
]
