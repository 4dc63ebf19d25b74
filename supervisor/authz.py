"""Who may do what: roles, request sources and the one permission table.

Every command — a valve from Modbus, an acknowledge from the console, a read-now from the
API — is checked here by the command dispatcher, so a role means the same whatever door the
request came through.  Roles are ordered; a kind of command needs a minimum role:

==================================  ============
command kind                        least role
==================================  ============
valve, read now                     operator
alarm acknowledge/shelve/unshelve   operator
set base reading, CDT time sync     engineer
==================================  ============

Sources: ``api``, ``console`` and ``cli`` act as the operator named in the request, who
must be configured in ``[[operators]]``.  ``modbus`` (whose masters have no login) acts as
the configured operator named ``modbus``: Modbus writes are refused unless that service
identity exists with a role that may do it; the request's ``who`` is still audited.
``plan`` and ``system`` are the supervisor itself (reading plans, start-up recovery) and
may do anything.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from st2000r.config.model import Operator
from st2000r.supervisor.events import CommandKind

__all__ = ["Role", "Source", "MIN_ROLE", "MODBUS_IDENTITY", "authorize"]

MODBUS_IDENTITY = "modbus"


class Role(enum.Enum):
    """An operator's role; ``value`` is the configuration's spelling."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ENGINEER = "engineer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ENGINEER: 2, Role.ADMIN: 3}


class Source(enum.Enum):
    """Where a request came from; ``value`` is the audit log's spelling."""

    API = "api"
    MODBUS = "modbus"
    CONSOLE = "console"
    CLI = "cli"
    PLAN = "plan"
    SYSTEM = "system"


MIN_ROLE: dict[CommandKind, Role] = {
    CommandKind.VALVE: Role.OPERATOR,
    CommandKind.READ_NOW: Role.OPERATOR,
    CommandKind.ALARM_ACK: Role.OPERATOR,
    CommandKind.ALARM_SHELVE: Role.OPERATOR,
    CommandKind.ALARM_UNSHELVE: Role.OPERATOR,
    CommandKind.SET_BASE: Role.ENGINEER,
    CommandKind.TIME_SYNC: Role.ENGINEER,
}


def authorize(operators: Mapping[str, Operator], who: str, source: Source, kind: CommandKind) -> str | None:
    """None if ``who`` coming through ``source`` may run a command of ``kind``; else the
    reason, in words, for the audit log and the caller."""
    if source in (Source.PLAN, Source.SYSTEM):
        return None
    name = MODBUS_IDENTITY if source is Source.MODBUS else who
    operator = operators.get(name)
    need = MIN_ROLE[kind]
    if operator is None:
        if source is Source.MODBUS:
            return (f"permission denied: Modbus writes need the service identity '{MODBUS_IDENTITY}' in "
                    f"[[operators]] with role {need.value} or above")
        return f"permission denied: unknown user {name!r}"
    try:
        role = Role(operator.role)
    except ValueError:
        return f"permission denied: {name!r} has an unknown role {operator.role!r}"
    if not role.at_least(need):
        return (f"permission denied: {name!r} is a {role.value} ({kind.value.replace('_', ' ')} needs "
                f"{need.value} or above)")
    return None
