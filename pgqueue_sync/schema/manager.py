"""The :class:`Schema` API: install, verify, upgrade and uninstall through a :class:`Driver`."""

from __future__ import annotations

from typing import Literal

from psycopg import sql

from ..drivers.base import Driver
from ..errors import AlreadyInstalledError, SchemaNotInstalledError
from ..settings import DBSettings, db_settings
from ..sql import ddl, names
from ..sql.ddl import TABLE_FIELDS
from ..types import Durability
from . import verification
from .catalog import Catalog
from .live import TABLE_ROLES
from .planner import Planner, UpgradePlan
from .scripts import durability_script, install_script, uninstall_script


class Schema:
    """The queue schema of one set of :class:`DBSettings`, managed through ``driver``.

    ``settings`` defaults to :func:`pgqueue_sync.settings.db_settings` (the
    ``PGQUEUER_*`` environment). Methods that change the schema run in
    ``driver.transaction()``; a driver bound to a caller's transaction joins it.
    """

    def __init__(self, driver: Driver, settings: DBSettings | None = None) -> None:
        self.driver = driver
        self.settings = settings if settings is not None else db_settings()
        names.check_lengths(self.settings)  # before any DDL: PostgreSQL would truncate
        self._catalog = Catalog(self.settings)

    def install(self, *, durability: Durability | None = None, create_schema: bool = True) -> None:
        """Create every object in one transaction.

        ``durability`` defaults to ``settings.durability``. Raises
        :class:`AlreadyInstalledError`, naming what was found, if any of the
        four tables, the enum, the function or the trigger already exists.
        """
        with self.driver.transaction() as tx:
            live = self._catalog.read(tx)
            found = verification.existing(self.settings, live)
            if found:
                raise AlreadyInstalledError(
                    f"queue objects already exist: {', '.join(found)}; run 'pgq-sync upgrade' "
                    "(or 'pgq upgrade') to bring them up to date, or uninstall first"
                )
            # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the
            # schema exists: skip it then, so an admin role with rights on the schema
            # alone can install (see docs/permissions.md).
            statements = ddl.install_statements(
                self.settings, durability=durability,
                create_schema=create_schema and not live.namespace_exists,
            )
            for statement in statements:
                tx.execute(statement)

    def install_sql(
        self, *, durability: Durability | None = None, create_schema: bool = True
    ) -> str:
        """The install as an offline SQL script (no existence check)."""
        return install_script(self.settings, durability=durability, create_schema=create_schema)

    def uninstall(self) -> None:
        """Drop the trigger, function, four tables, enum and legacy enum, in one transaction.

        Every drop is ``IF EXISTS``, so a partial or absent install is fine. Destroys all jobs.
        """
        with self.driver.transaction() as tx:
            for statement in ddl.uninstall_statements(self.settings):
                tx.execute(statement)

    def uninstall_sql(self) -> str:
        """The uninstall as an offline SQL script."""
        return uninstall_script(self.settings)

    def install_results(self) -> None:
        """Create pgqueue_sync's opt-in results table (idempotent).

        Not one of PgQueuer's objects: :meth:`install`, :meth:`verify`,
        :meth:`upgrade` and :meth:`uninstall` leave it alone, as ``pgq`` does.
        See :class:`~pgqueue_sync.results.Results`.
        """
        from ..results import Results

        Results(self.driver, self.settings).install()

    def uninstall_results(self) -> None:
        """Drop the results table and every stored result (``IF EXISTS``)."""
        from ..results import Results

        Results(self.driver, self.settings).uninstall()

    def verify(self, expect: Literal["present", "absent"]) -> list[str]:
        """Problems found, ``[]`` when the database is as expected.

        ``absent``: none of the four tables, the enum, the function or the
        trigger may exist (``"unexpected table 'pgqueuer'"``). ``present``: all
        of them must, plus what a PgQueuer 1.6 worker checks at boot: columns,
        the ``canceled``/``failed`` labels and two indexes
        (``"missing column 'pgqueuer.slot'"``). Extra indexes, such as the one
        PgQueuer 2.x adds to the statistics table, are never a problem; they
        are named at DEBUG.
        """
        if expect not in ("present", "absent"):
            raise ValueError(f"expect must be 'present' or 'absent', not {expect!r}")
        live = self._catalog.read(self.driver)
        if expect == "absent":
            return [f"unexpected {item}" for item in verification.existing(self.settings, live)]
        return verification.missing(self.settings, live)

    def is_installed(self) -> bool:
        """True when the four tables, the enum, the function and the trigger all exist.

        A partial install is not installed, yet :meth:`install` still refuses it.
        """
        live = self._catalog.read(self.driver)
        return all(verification.objects(self.settings, live).values())

    def _plan(self, driver: Driver) -> UpgradePlan:
        return Planner(self.settings, self._catalog, self._catalog.read(driver)).plan()

    def plan_upgrade(self) -> list[str]:
        """The SQL :meth:`upgrade` would run now, ``[]`` when already 1.6.0-shaped.

        Raises :class:`SchemaError` for a column whose type upgrade cannot convert.
        """
        return self._plan(self.driver).texts()

    def upgrade(self) -> list[str]:
        """Bring the schema to PgQueuer 1.6.0's shape and return the SQL that ran.

        Idempotent; never drops tables or columns and never changes durability.
        Indexes it does not declare (PgQueuer 2.x's ``{statistics_table}_created``,
        or your own) are left alone; only the index PgQueuer 1.5.0 retired is dropped.
        Missing enum labels are added and committed first (a new label cannot
        be used in the transaction that adds it); everything else runs in a
        second transaction. Both take ``pg_advisory_xact_lock`` on the key
        ``pgq upgrade`` uses, so concurrent upgrades (ours or PgQueuer's)
        serialise, and each plans inside its lock.
        """
        key = ddl.advisory_lock_key(self.settings)
        lock = sql.SQL("SELECT pg_advisory_xact_lock(%s)")
        ran: list[str] = []
        with self.driver.transaction() as tx:
            tx.execute(lock, [key])
            labels = self._plan(tx).labels
            for statement in labels:
                tx.execute(statement)
            ran += [ddl.render(s) for s in labels]
        with self.driver.transaction() as tx:
            tx.execute(lock, [key])
            main = self._plan(tx).main
            for statement in main:
                tx.execute(statement)
            ran += [ddl.render(s) for s in main]
        return ran

    def current_durability(self) -> dict[str, bool]:
        """Table role (``queue``, ``log``, ``statistics``, ``schedules``) -> is LOGGED.

        Only tables that exist are listed.
        """
        tables = self._catalog.read(self.driver).tables
        return {role: not tables[role].unlogged for role in TABLE_ROLES if role in tables}

    def durability_sql(self, level: Durability) -> str:
        """``SET LOGGED``/``SET UNLOGGED`` for all four tables, as an offline script."""
        return durability_script(self.settings, level)

    def set_durability(self, level: Durability) -> list[str]:
        """Switch the tables to ``level`` in one transaction; returns the statements run.

        Only tables whose persistence differs are altered (each one is rewritten).
        Raises :class:`SchemaNotInstalledError` if a table is missing.
        """
        level = Durability(level)
        unlogged = level.unlogged_tables()
        ran: list[str] = []
        with self.driver.transaction() as tx:
            tables = self._catalog.read(tx).tables
            missing = [
                self.settings.bare_name(TABLE_FIELDS[r]) for r in TABLE_ROLES if r not in tables
            ]
            if missing:
                raise SchemaNotInstalledError(
                    f"missing table(s) {', '.join(missing)}; run 'pgq-sync install' first"
                )
            for role in TABLE_ROLES:
                if tables[role].unlogged != (role in unlogged):
                    statement = ddl.set_persistence(
                        self.settings, role, logged=role not in unlogged
                    )
                    tx.execute(statement)
                    ran.append(ddl.render(statement))
        return ran
