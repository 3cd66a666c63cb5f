"""Request bodies as every API takes them: JSON only as JSON, read after the API key was checked, and only JSON that
each API can store and answer again (issue 13: hostile input never reaches a bare 500)."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from imagegen.errors import ImagegenError, InvalidRequest
from imagegen.options import check_text

MAX_JSON_DEPTH = 32  # A1111's alwayson_scripts, the deepest body clients send, nests 5; Python's parser fails near 1000
MAX_INT_DIGITS = 20  # every whole number an API takes fits 64 bits; int() raises past 4300 digits (and is quadratic)


class UnsupportedMediaType(ImagegenError):
    """A body that is not sent as JSON (`Content-Type: application/json`; the native job API also takes a form). A
    web page elsewhere can POST text/plain or a form without asking the browser first, so taking JSON only as JSON
    leaves such pages one more wall than the Origin check (issue 13)."""

    http_status = 415


async def json_body(request: Request) -> Any:
    """The request's body as strict JSON (`parse_json`), read only when the endpoint asks: after the API key was
    checked, so that a large body without a key costs nothing (issue 13). JSON is taken only as application/json."""
    media_type = media_type_of(request)
    if media_type != "application/json":
        raise UnsupportedMediaType(f"send the body as JSON with Content-Type: application/json, not {media_type!r}"
                                   if media_type else "send the body as JSON with Content-Type: application/json")
    return await asyncio.to_thread(parse_json, await request.body(), "the body")  # up to 32 MB: off the event loop


def parse_json(text: str | bytes, what: str) -> Any:
    """JSON that every API can take and answer again: whole numbers of at most MAX_INT_DIGITS digits, finite
    numbers only (no NaN or Infinity, which no JSON answer may echo), at most MAX_JSON_DEPTH levels, and text
    that UTF-8 can hold (a lone surrogate, "\\ud800", is valid JSON that no answer could show); raises
    InvalidRequest naming `what`."""
    try:
        value = json.loads(text, parse_int=_whole_number, parse_float=_finite_number, parse_constant=_non_number)
    except RecursionError:
        raise InvalidRequest(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidRequest(f"{what} is not valid JSON: {error}") from None
    _check_nesting_and_text(value, what)
    return value


def _whole_number(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise InvalidRequest(f"a whole number of {digits} digits is beyond every limit here "
                             f"(at most {MAX_INT_DIGITS} digits)")
    return int(text)


def _finite_number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequest(f"the number {text[:40]} is beyond the range of a float")
    return value


def _non_number(name: str) -> None:
    raise InvalidRequest(f"{name} is not a number JSON allows; send a finite number")


def _check_nesting_and_text(value: Any, what: str) -> None:
    """Walk a parsed body (without recursion: it may nest as deep as the parser allows) for MAX_JSON_DEPTH and for
    text, keys included. Only non-ASCII text can fail (`str.isascii` costs nothing), and a path is spelled out only
    for a message, so that a body of millions of strings is checked in a fraction of its parsing time. A key is
    checked before it joins a path: a message never holds the text it refuses."""

    def check(text: str, path: tuple[str | int, ...], name: bool = False) -> None:
        if not text.isascii():
            where = ".".join(map(str, path)) or what
            check_text(text, f"a name in {where}" if name else where)

    if isinstance(value, str):
        check(value, ())
    pending: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 1, ())]
    while pending:
        item, depth, path = pending.pop()
        if not isinstance(item, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequest(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
        for key, child in item.items() if isinstance(item, dict) else enumerate(item):
            if isinstance(key, str):
                check(key, path, name=True)
            if isinstance(child, str):
                check(child, (*path, key))
            elif isinstance(child, (dict, list)):
                pending.append((child, depth + 1, (*path, key)))


def media_type_of(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def validation_message(error: ValidationError) -> str:
    """The first problem of a body that failed validation, as `field.path: message` (the native and A1111 APIs'
    answer; the OpenAI API names the field in an error of its own shape)."""
    first = error.errors(include_url=False)[0]
    where = ".".join(map(str, first["loc"]))
    return f"{where}: {first['msg']}" if where else first["msg"]
