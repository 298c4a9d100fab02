"""The key/value list handed to a module's ``init`` (docs/protocol.md §5.6 step 3)."""

from __future__ import annotations

from collections.abc import Mapping

_COMPANY = "company_name"
_CAR = "car_name"


def _text(value: str | int | float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def build_init_config(
    company: str, car: str, module_config: Mapping[str, str | int | float]
) -> list[tuple[str, str]]:
    """company_name first, car_name second, then the module's entries in order.

    A module entry named company_name or car_name overrides the server's value
    but keeps position 1 or 2 and is not repeated. Values take their ``str()``
    form; booleans become "1"/"0" (the reference coerces JSON true to 1).
    """
    pairs = [(_COMPANY, company), (_CAR, car)]
    for key, value in module_config.items():
        if key == _COMPANY:
            pairs[0] = (key, _text(value))
        elif key == _CAR:
            pairs[1] = (key, _text(value))
        else:
            pairs.append((key, _text(value)))
    return pairs
