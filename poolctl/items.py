"""The item: one row's id and text, and its JSON form inside a pool.

The pool JSON is `{"id": <int>, "text": <str>}`, the format the Go consumer
decodes. It is written compactly and without ASCII escaping, so a Chinese
character costs three bytes in Redis rather than six.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring as _quote  # the C string quoter json.dumps uses without ASCII escaping
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
    """The pool JSON of one item: the same text as json.dumps with ensure_ascii=False and compact separators."""
    return '{"id":%d,"text":%s}' % (item_id, _quote(text))


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


def decode_popped(joined: bytes, ids: list[int], lengths: list[int]) -> tuple[list[Item], list[tuple[int, bytes, str]]]:
    """Parse the entries one pop returned, joined by commas, whose ids the pop step read.

    Returns the items and the rejected entries as (id, entry, reason): an
    entry Python cannot parse, or whose id is not the one the pop recorded in
    acks. The common case is one json.loads of the whole batch as an array;
    only when that fails or disagrees with ids is each entry parsed alone.
    """
    try:
        parsed = json.loads("[" + joined.decode() + "]")
    except ValueError:  # UnicodeDecodeError included
        parsed = None
    if isinstance(parsed, list) and len(parsed) == len(ids):
        items = []
        for data, item_id in zip(parsed, ids):
            if type(data) is not dict or type(data.get("id")) is not int or data["id"] != item_id:
                break
            text = data.get("text")
            if type(text) is not str:
                break
            items.append(Item(item_id, text))
        else:
            return items, []
    items, rejected = [], []
    start = 0
    for item_id, length in zip(ids, lengths, strict=True):
        raw = joined[start : start + length]
        start += length + 1
        try:
            item = decode_item(raw)
        except MalformedItem as exc:
            rejected.append((item_id, raw, str(exc)))
            continue
        if item.id != item_id:
            rejected.append((item_id, raw, f"its id {item.id} is not the id {item_id} its ack recorded"))
            continue
        items.append(item)
    return items, rejected
