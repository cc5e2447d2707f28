"""Install, verify, upgrade and uninstall the queue schema through a :class:`Driver`.

The schema is PgQueuer 1.6.0's, object for object (see :mod:`pgqueue_sync.sql.ddl`).
Upgrades are catalog-driven like ``pgq upgrade``: the live catalog is read,
diffed against the declaration, and only the difference is applied, so a
database that PgQueuer 1.3+ (or pgqueue_sync) installed converges on exactly
what ``pgq install`` 1.6.0 creates. Nothing here drops a table or a column,
and durability is only changed by :meth:`Schema.set_durability`.

Indexes on the queue tables that the declaration does not know (PgQueuer
2.x's ``{statistics_table}_created``, an operator's own) are tolerated, as
``pgq upgrade`` tolerates unknown objects: verify does not report them, and
upgrade neither rebuilds nor drops them. Both name them at DEBUG. Uninstall
removes them with their tables.

The package's modules:

* :mod:`.manager`: the :class:`Schema` API;
* :mod:`.live` and :mod:`.catalog`: a snapshot of what the catalog holds, and its reader;
* :mod:`.verification`: which objects exist, and what a PgQueuer 1.6 worker would miss;
* :mod:`.planner`: the upgrade planner;
* :mod:`.unmanaged`: indexes the declaration does not know;
* :mod:`.scripts`: the offline install, uninstall and durability scripts.
"""

from __future__ import annotations

from .manager import Schema
from .scripts import durability_script, install_script, uninstall_script

__all__ = ["Schema", "durability_script", "install_script", "uninstall_script"]
