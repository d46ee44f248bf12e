"""RFM snapshots and lifecycle stages (DESIGN.md section 8): computed in the database, kept per run."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, BigId, Derived, StoreScoped, utcnow


class RfmRun(StoreScoped, Base):
    """One snapshot: its as_of, the cut-points it used, population and scored counts, group shares, drift."""

    __tablename__ = "rfm_runs"
    __table_args__ = (sa.Index(None, "store_id", "as_of"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    as_of: Mapped[dt.date]
    window_days: Mapped[int]
    #: "percentiles" (R and M cut at the 20/40/60/80th percentiles) or "fixed" (small store fallback).
    method: Mapped[str] = mapped_column(sa.String(16))
    #: {"recency": [4 values], "monetary_cents": [4 values], "frequency": [4 thresholds]}
    cutpoints: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: The thresholds the run used: {"rfm": RfmConfig fields, "lifecycle": LifecycleConfig fields or null}.
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    population: Mapped[int] = mapped_column(default=0)
    scored: Mapped[int] = mapped_column(default=0)
    complete: Mapped[bool] = mapped_column(default=False)
    #: Share of the scored population per group, and the groups whose share moved more than the alert threshold.
    group_shares: Mapped[dict[str, Any]] = mapped_column(default=dict)
    drift_alerts: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    transitions: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]


class RfmScore(Derived, Base):
    """A contact's scores in one run (read by run: the primary key is the only index)."""

    __tablename__ = "rfm_scores"

    run_id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(primary_key=True)
    recency_days: Mapped[int]
    frequency: Mapped[int]
    monetary_cents: Mapped[int] = mapped_column(sa.BigInteger)
    r: Mapped[int] = mapped_column(sa.SmallInteger)
    f: Mapped[int] = mapped_column(sa.SmallInteger)
    m: Mapped[int] = mapped_column(sa.SmallInteger)
    composite: Mapped[int] = mapped_column(sa.SmallInteger)
    group: Mapped[str] = mapped_column(sa.String(16))


class RfmTransition(StoreScoped, Base):
    """A contact whose group changed between a run and the store's previous run (what flows trigger on)."""

    __tablename__ = "rfm_transitions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("rfm_runs.id", ondelete="CASCADE"), index=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    from_group: Mapped[str | None] = mapped_column(sa.String(16))
    to_group: Mapped[str | None] = mapped_column(sa.String(16))


class ContactLifecycle(Derived, Base):
    """A contact's lifecycle stage and churn risk as last computed."""

    __tablename__ = "contact_lifecycle"
    __table_args__ = (sa.Index(None, "store_id"),)

    contact_id: Mapped[int] = mapped_column(primary_key=True)
    stage: Mapped[str] = mapped_column(sa.String(16))  # new | active | at_risk | churned | reactivated
    churn_risk: Mapped[Decimal] = mapped_column(sa.Numeric(4, 3))
    computed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
