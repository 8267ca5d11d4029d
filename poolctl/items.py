"""The item: one row's id and text, and its JSON form inside a pool.

The pool JSON is `{"id": <int>, "text": <str>}`, the format the Go consumer
decodes. It is written compactly and without ASCII escaping, so a Chinese
character costs three bytes in Redis rather than six.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

Source = Literal["pool", "sql"]


@dataclass(frozen=True, slots=True)
class Item:
    """One text item: its SQL id, its text and where the consumer got it from."""

    id: int
    text: str
    source: Source = "pool"


class MalformedItem(ValueError):
    """A pool entry that is not the JSON object {"id": <int>, "text": <str>}."""


def encode_item(item_id: int, text: str) -> str:
    return json.dumps({"id": item_id, "text": text}, ensure_ascii=False, separators=(",", ":"))


def decode_item(raw: bytes | str) -> Item:
    """Parse a pool entry, raising MalformedItem when it is not a valid item."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedItem(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedItem("not a JSON object")
    item_id = data.get("id")
    text = data.get("text")
    # bool is a subclass of int in Python, but true/false is not an id.
    if not isinstance(item_id, int) or isinstance(item_id, bool) or item_id < 0:
        raise MalformedItem("id is missing or not a non-negative integer")
    if not isinstance(text, str):
        raise MalformedItem("text is missing or not a string")
    return Item(id=item_id, text=text)
