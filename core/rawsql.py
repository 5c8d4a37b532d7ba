"""Model instances from hand-written SQL, for the few statements that run on every request.

Building a query with the ORM costs about a millisecond of CPU; these statements are
written once (and prepared once per connection on PostgreSQL) instead.
"""

from functools import cache

from django.db import DEFAULT_DB_ALIAS, connection
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init


def columns(model, alias: str) -> str:
    """The model's columns in field order, for ``SELECT`` and ``RETURNING`` lists."""
    return ", ".join(f'{alias}."{field.column}"' for field in model._meta.concrete_fields)


@cache
def _converters(model, vendor: str) -> list[tuple[int, list, object]]:
    converters = []
    for i, field in enumerate(model._meta.concrete_fields):
        column = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(column) + field.get_db_converters(connection)
        if found:
            converters.append((i, found, column))
    return converters


def instances(model, rows, *, start: int = 0) -> list:
    """Instances of ``model`` from rows holding its columns (as ``columns`` lists them) at ``start``,
    converted from database values exactly as the ORM would."""
    fields = model._meta.concrete_fields
    attnames = [field.attname for field in fields]
    converters = _converters(model, connection.vendor)
    # ``Model.__init__`` sets the fields one by one; with no init signal to send, filling the
    # instance's dict is the same instance at a fraction of the cost.
    direct = not (pre_init.has_listeners(model) or post_init.has_listeners(model))
    built = []
    for row in rows:
        values = list(row[start : start + len(fields)])
        for i, found, column in converters:
            for convert in found:
                values[i] = convert(values[i], column, connection)
        if direct:
            instance = model.__new__(model)
            instance.__dict__.update(zip(attnames, values, strict=True))
            instance._state = state = ModelState()
            state.adding, state.db = False, DEFAULT_DB_ALIAS
        else:
            instance = model.from_db(DEFAULT_DB_ALIAS, attnames, values)
        built.append(instance)
    return built
