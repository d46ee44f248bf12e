"""The pre-built segments every store gets (``espbridge segments install-prebuilt`` or its first evaluation).

==================  ===========================================================================================
VIP                 ``rfm.group = VIP`` (composite 38-50 in the latest RFM run)
Loyal               ``rfm.group = Loyal`` (composite 28-37)
At Risk             ``rfm.group = At Risk`` (composite 18-27)
Hibernating         ``rfm.group = Hibernating`` (composite 10-17)
New Customers       a first order in the last 30 days
Churn Risk          lifecycle churn risk ≥ 0.7 (connector/lifecycle.py documents the score)
Window Shoppers     ≥ 3 "Product Viewed" in the last 30 days and never ordered
Cart Abandoners     a cart abandoned in the last 7 days (still abandoned: not converted by an order since)
==================  ===========================================================================================
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from connector.store.segments import Segment

PREBUILT: dict[str, tuple[str, dict[str, Any]]] = {
    "VIP": ("Best customers: RFM composite 38-50.", {"rfm.group": "VIP"}),
    "Loyal": ("Regular customers: RFM composite 28-37.", {"rfm.group": "Loyal"}),
    "At Risk": ("Customers slipping away: RFM composite 18-27.", {"rfm.group": "At Risk"}),
    "Hibernating": ("Lapsed customers: RFM composite 10-17.", {"rfm.group": "Hibernating"}),
    # A first order at most 30 days old implies an order: no separate orders.count (one grouping of the orders).
    "New Customers": ("First order in the last 30 days.", {"days_since_first_order": {"lte": 30}}),
    "Churn Risk": ("Lifecycle churn risk of 0.7 or more.", {"lifecycle.churn_risk": {"gte": 0.7}}),
    "Window Shoppers": (
        "Viewed 3+ products in the last 30 days and never ordered.",
        {"events": {"name": "Product Viewed", "within_days": 30, "count": {"gte": 3}}, "orders.count": 0},
    ),
    "Cart Abandoners": ("A cart abandoned in the last 7 days.", {"carts.abandoned_within_days": 7}),
}


def install_prebuilt(session: Session, store_id: int) -> list[Segment]:
    """Create the pre-built segments the store lacks (by name); returns the ones created."""
    existing = set(session.scalars(sa.select(Segment.name).where(Segment.store_id == store_id)))
    created = [
        Segment(store_id=store_id, name=name, description=description, criteria=criteria, prebuilt=True)
        for name, (description, criteria) in PREBUILT.items()
        if name not in existing
    ]
    session.add_all(created)
    session.flush()
    return created
