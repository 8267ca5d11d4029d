"""The item: one row's id and text, and its JSON form inside a pool.

The pool JSON is `{"id": <int>, "text": <str>}`, the format the Go consumer
decodes. It is written compactly and without ASCII escaping, so a Chinese
character costs three bytes in Redis rather than six.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring as _quote  # the C string quoter json.dumps uses without ASCII escaping
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import Literal, NamedTuple

import orjson

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


# For decode_popped: C-level helpers, so that a pop of 100 runs no Python
# code per item. _new_item builds an Item from (id, text, source) the way
# the named tuple's own __new__ does, without that Python-level call.
_id, _text = itemgetter("id"), itemgetter("text")
_new_item = partial(tuple.__new__, Item)


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


def decode_popped(joined: bytes, joined_ids: bytes) -> tuple[list[Item], list[tuple[int, bytes, str]]]:
    """Parse the entries one pop returned, joined by newlines, with the ids the pop step read and acked ("1,2,3").

    Returns the items and the rejected entries as (id, entry, reason): an
    entry Python cannot parse, or whose id is not the one the pop recorded in
    acks. The common case is one parse of the ids and all entries together as
    one JSON array, checked as a whole. Only when that fails is each entry
    parsed alone, by the standard json module, which also accepts what orjson
    refuses (a lone surrogate escape, an id beyond 64 bits).
    """
    if not joined_ids:
        return [], []
    try:
        if b"," not in joined_ids:  # the common pop of one: no array to build
            data = orjson.loads(joined)
            acked = int(joined_ids)
            if type(data) is dict and data.get("id") == acked and type(data.get("text")) is str:
                return [Item(acked, data["text"])], []
        else:
            parsed = orjson.loads(b"[[" + joined_ids + b"]," + joined.replace(b"\n", b",") + b"]")
            ids = parsed.pop(0)
            texts = list(map(_text, parsed))
            if list(map(_id, parsed)) == ids and all(map(str.__instancecheck__, texts)):
                return list(map(_new_item, zip(ids, texts, repeat("pool")))), []
    except (ValueError, TypeError, KeyError, AttributeError):  # orjson.JSONDecodeError is a ValueError
        pass
    items, rejected = [], []
    for item_id, raw in zip([int(value) for value in joined_ids.split(b",")], joined.split(b"\n"), strict=True):
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
