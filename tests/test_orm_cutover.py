"""An application built on an ORM moves to Postgres with only its connection settings
changed. Its own models create the SQLite schema and write through dual-write; after
`syncd cutover` the same models, pointed at Postgres (SQLAlchemy async with asyncpg,
the user's planned stack), create rows without ids, read datetimes, dates, decimals and
booleans as such, follow foreign keys, and are refused duplicates."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal

import pytest
from sqlalchemy import Boolean, Date, DateTime, ForeignKey, Integer, Numeric, String, create_engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up


class Base(DeclarativeBase):
    pass


class Company(Base):
    __tablename__ = "company"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    contacts: Mapped[list["Contact"]] = relationship(back_populates="company")


class Contact(Base):
    __tablename__ = "contact"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(120), unique=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("company.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    first_call: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    company: Mapped[Company] = relationship(back_populates="contacts")


def create_and_fill(db) -> None:
    engine = create_engine(f"sqlite:///{db}")
    Base.metadata.create_all(engine)  # the application's own migration
    with Session(engine) as s:
        acme, globex = Company(name="Acme"), Company(name="Globex")
        s.add_all([acme, globex])
        for i in range(12):
            s.add(Contact(email=f"c{i}@acme.example", company=acme if i % 2 else globex,
                          created_at=dt.datetime(2026, 11, 1, 9, i, 30, 250000),
                          first_call=dt.date(2026, 11, 2 + i) if i % 3 else None,
                          balance=Decimal("1000.50") + i, active=bool(i % 4)))
        s.commit()
    engine.dispose()


def keep_working(db) -> None:
    """The application writing while the daemon streams (dual-write)."""
    engine = create_engine(f"sqlite:///{db}")
    with Session(engine) as s:
        s.add(Contact(email="c12@acme.example", company_id=2, created_at=dt.datetime(2026, 11, 20, 8, 0, 0, 5),
                      first_call=dt.date(2026, 11, 21), balance=Decimal("12.34"), active=True))
        c = s.scalars(select(Contact).where(Contact.email == "c3@acme.example")).one()
        c.balance = Decimal("99.99")
        c.active = False
        s.delete(s.scalars(select(Contact).where(Contact.email == "c11@acme.example")).one())
        s.commit()
    engine.dispose()


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # SQLite has no native Decimal
async def test_an_orm_application_moves_to_postgres_with_only_its_connection_changed(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_and_fill(db)
    backups = tmp_path / "backups"
    backups.mkdir()
    sqlite3.connect(db).backup(sqlite3.connect(backups / "app.db"))
    cfg = make_config([{"name": "crm", "path": str(db), "schema": "crm"}], sections={
        "cutover": {"min_days": 0, "backup_glob": str(backups / "*.db")}, "verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        keep_working(db)  # streamed, not loaded
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "cutover")
        assert r.returncode == 0, r.stdout + r.stderr
        assert d.stop() == 0

    # The same models, pointed at Postgres: only the connection settings change.
    url = pg_dsn.replace("postgresql://", "postgresql+asyncpg://")
    engine = create_async_engine(url, connect_args={"server_settings": {"search_path": "crm"}})
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_on_postgres)
    finally:
        await engine.dispose()


def _on_postgres(conn) -> None:
    s = Session(bind=conn)
    new = Contact(email="first@postgres.example", company_id=1, created_at=dt.datetime(2026, 12, 1, 12, 0),
                  balance=Decimal("5.00"))
    s.add(new)
    s.flush()
    assert new.id == 14  # where SQLite would go on: after the highest id it holds (13; 12 was deleted)
    c3 = s.scalars(select(Contact).where(Contact.email == "c3@acme.example")).one()
    assert c3.created_at == dt.datetime(2026, 11, 1, 9, 3, 30, 250000)
    assert c3.first_call is None and isinstance(c3.balance, Decimal) and c3.balance == Decimal("99.99")
    assert c3.active is False
    c12 = s.scalars(select(Contact).where(Contact.email == "c12@acme.example")).one()
    assert c12.created_at == dt.datetime(2026, 11, 20, 8, 0, 0, 5) and c12.first_call == dt.date(2026, 11, 21)
    assert c12.balance == Decimal("12.34") and c12.active is True
    c5 = s.scalars(select(Contact).where(Contact.email == "c5@acme.example")).one()
    assert c5.first_call == dt.date(2026, 11, 7) and c5.active is True
    acme = s.scalars(select(Company).where(Company.name == "Acme").options(selectinload(Company.contacts))).one()
    assert sorted(c.email for c in acme.contacts)[:2] == ["c1@acme.example", "c3@acme.example"]
    assert s.get(Contact, c3.id).company.name == "Acme"  # follows the foreign key
    with pytest.raises(IntegrityError):  # duplicates SQLite refused, Postgres refuses too
        with s.begin_nested():
            s.add(Contact(email="c1@acme.example", company_id=1, created_at=dt.datetime.now(), balance=1))
            s.flush()
    with pytest.raises(IntegrityError):  # and a contact of a company that does not exist
        with s.begin_nested():
            s.add(Contact(email="orphan@x", company_id=999, created_at=dt.datetime.now(), balance=1))
            s.flush()
    s.rollback()
