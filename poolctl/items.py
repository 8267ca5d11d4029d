"""The item: one row's id and text, and its JSON form inside a pool.

The pool JSON is `{"id": <int>, "text": <str>}`, the format the Go consumer
decodes. It is written compactly and without ASCII escaping, so a Chinese
character costs three bytes in Redis rather than six.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring as _quote  # the C string quoter json.dumps uses without ASCII escaping
from typing import Literal, NamedTuple

Source = Literal["pool", "sql"]


class Item(NamedTuple):
    """One text item: its SQL id, its text and where the consumer got it from.

    A named tuple rather than a dataclass: a pop of 100 creates 100 of them,
    and a tuple is made in half the time.
    """

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


def decode_popped(joined: bytes, ids: list[int]) -> tuple[list[Item], list[tuple[int, bytes, str]]]:
    """Parse the entries one pop returned, joined by newlines, whose ids the pop step read and acked.

    Returns the items and the rejected entries as (id, entry, reason): an
    entry Python cannot parse, or whose id is not the one the pop recorded in
    acks. The common case is one json.loads of the whole batch as an array,
    checked as a whole. Only when that fails is each entry parsed alone.
    """
    if not ids:
        return [], []
    if len(ids) == 1:  # the common pop of one: no array to build
        try:
            data = json.loads(joined)
        except ValueError:
            data = None
        if type(data) is dict and data.get("id") == ids[0] and type(data.get("text")) is str:
            return [Item(ids[0], data["text"])], []
    try:
        parsed = json.loads("[" + joined.decode().replace("\n", ",") + "]")
        texts = [data["text"] for data in parsed]
        same_ids = [data["id"] for data in parsed] == ids
    except (ValueError, TypeError, KeyError):  # UnicodeDecodeError is a ValueError
        same_ids = False
    if same_ids and all(type(text) is str for text in texts):
        return list(map(Item, ids, texts)), []
    items, rejected = [], []
    for item_id, raw in zip(ids, joined.split(b"\n"), strict=True):
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
