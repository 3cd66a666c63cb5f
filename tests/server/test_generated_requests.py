"""Property-based fuzzing of a real server (issue 13): Hypothesis sends generated bodies, query strings and headers
to every route of the app (read from the app itself, so a new route is fuzzed too) and no answer may be a 5xx.

The generated JSON leans towards what breaks servers: the API's own field names with values of the wrong type,
lone surrogates, NaN and Infinity, huge and negative numbers, deep nesting, bodies that are no JSON, content types
and keys that are wrong. The default run sends a few hundred requests; IMAGEGEN_SLOW_TESTS=1 adds a run of
thousands.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server.conftest import Server, start_server, stop_server

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


@pytest.fixture(scope="module")
def fuzz_server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own: generated requests may interrupt, cancel and reconfigure (A1111's checkpoint)."""
    running = start_server(tmp_path_factory.mktemp("fuzz_data"), server_env)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, tuple[str, ...]]]:
    """(path, methods) of every route the app serves, from an app built here as `imagegen serve` builds it."""
    from imagegen.server.app import create_app
    from imagegen.server.service import ServerSettings, Service

    app = create_app(Service(ServerSettings(data_dir=tmp_path_factory.mktemp("routes_data")), engine=None))
    return list(api_routes(app.routes))


def api_routes(routes: list[Any]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """FastAPI 0.16x keeps an included router as one entry that holds it (`original_router`, its routes' paths
    prefixed already); earlier versions copy its routes into the app's list."""
    from fastapi.routing import APIRoute

    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from api_routes(included.routes)
        elif isinstance(route, APIRoute):
            yield route.path, tuple(sorted(route.methods))


def field_names() -> list[str]:
    """Every field name a body of the three APIs has, so that generated bodies reach the validation of each."""
    from imagegen.server.api_a1111 import Img2ImgBody
    from imagegen.server.api_openai import ImageGenerationBody
    from imagegen.server.app import JobBody

    names = {*JobBody.model_fields, *ImageGenerationBody.model_fields, *Img2ImgBody.model_fields}
    return sorted(names | {"sd_model_checkpoint", "name", "weight"})


TEXT = st.text(st.characters(exclude_categories=()) | st.characters(categories=["Cs"]), max_size=12)  # surrogates too
NUMBERS = st.one_of(st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 1, 8, 64, 256, 2**32, 2**63, 0.5, 1e308]))
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT, st.sampled_from(["7", "digits", "sd15", "png", "url",
                                                                             "Euler", "auto", "64x64", "b64_json"]))


def json_values(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(LEAVES, lambda children: st.lists(children, max_size=4) |
                        st.dictionaries(keys, children, max_size=4), max_leaves=12)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A request body: mostly a JSON object of the APIs' field names, else any JSON, deep nesting, a number of
    thousands of digits, or bytes that are no JSON."""
    keys = st.sampled_from(field_names()) | TEXT
    kind = draw(st.sampled_from(["object", "object", "object", "json", "deep", "digits", "bytes", "empty"]))
    if kind == "object":
        return json.dumps(draw(st.dictionaries(keys, LEAVES | json_values(keys), min_size=1, max_size=8))).encode()
    if kind == "json":
        return json.dumps(draw(json_values(keys))).encode()
    if kind == "deep":
        depth = draw(st.integers(1, 5000))
        return b'{"prompt": ' * depth + b"1" + b"}" * depth
    if kind == "digits":
        return b'{"seed": ' + b"7" * draw(st.integers(15, 6000)) + b"}"
    return b"" if kind == "empty" else draw(st.binary(max_size=64))


def mostly(draw: st.DrawFn, usual: Any, others: st.SearchStrategy[Any]) -> Any:
    """`usual` about three times in four, so that most requests pass the key, the content type and the method and
    reach the validation of their body (Hypothesis leans towards the first of sampled_from's choices)."""
    return usual if draw(st.sampled_from([True, True, True, False])) else draw(others)


@st.composite
def headers(draw: st.DrawFn, key: str) -> dict[str, str]:
    """Content type, key (right, wrong or missing), sometimes an Origin, and headers the server never heard of."""
    printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=30).map(str.strip)
    result = {
        "Content-Type": mostly(draw, "application/json", st.sampled_from([
            "application/json; charset=utf-8", "APPLICATION/JSON", "application/json; charset=utf-16", "text/plain",
            "multipart/form-data", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", ""])
            | printable),
        "Authorization": mostly(draw, f"Bearer {key}", st.sampled_from(["Bearer wrong", "Basic !!!", "Basic Og==", ""])
                                | printable),
    }
    if draw(st.sampled_from([False] * 9 + [True])):
        result["Origin"] = draw(st.sampled_from(["null", "http://evil.example"]) | printable)
    extra = draw(st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12), printable,
                                 max_size=3))
    return {**{f"x-fuzz-{name}": value for name, value in extra.items()}, **result}


def send(client: httpx.Client, data: st.DataObject, routes: list[tuple[str, tuple[str, ...]]], key: str) -> None:
    """One generated request; its answer must not be a 5xx, and a JSON answer must parse."""
    posted = [route for route in routes if "POST" in route[1]]  # half the requests go where bodies are read
    path, methods = data.draw(st.sampled_from(posted) | st.sampled_from(routes), label="route")
    method = mostly(data.draw, methods[0], st.sampled_from(methods + METHODS))
    url = re.sub(r"\{\w+\}", lambda _: escaped(data.draw(TEXT, label="path parameter")), path)
    query = data.draw(st.dictionaries(st.sampled_from(["offset", "limit", "x"]), NUMBERS.map(str) | TEXT, max_size=2),
                      label="query")
    url += "?" + "&".join(f"{name}={escaped(value)}" for name, value in query.items())
    request_headers = data.draw(headers(key), label="headers")
    if method in ("GET", "DELETE") and data.draw(st.booleans(), label="no body"):
        response = client.request(method, url, headers=request_headers)
    elif data.draw(st.sampled_from([False] * 9 + [True]), label="form"):  # options as a field or a file, and files
        options = data.draw(bodies(), label="options")
        files = {"options": (None, options) if data.draw(st.booleans(), label="options plain") else ("o.json", options)}
        for name in data.draw(st.lists(st.sampled_from(["init_image", "mask_image", "control_image", "x"]),
                                       max_size=2), label="files"):
            files[name] = ("f.png", data.draw(st.binary(max_size=64), label=name))
        request_headers.pop("Content-Type")
        response = client.request(method, url, headers=request_headers, files=files)
    else:
        response = client.request(method, url, headers=request_headers, content=data.draw(bodies(), label="body"))
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.headers.get("content-type", "").startswith("application/json"):
        response.json()


def escaped(text: str) -> str:
    """Percent-escaped UTF-8, a lone surrogate included (as the invalid bytes it would be)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def fuzz(server: Server, routes: list[tuple[str, tuple[str, ...]]], examples: int) -> None:
    """Send `examples` generated requests, then check that the server still answers and its worker still runs."""
    with httpx.Client(base_url=server.url, timeout=120) as client:

        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(data=st.data())
        def generated_request(data: st.DataObject) -> None:
            send(client, data, routes, server.api_key)

        generated_request()
        assert client.get("/health").status_code == 200
        assert client.get("/ready").json() == {"ready": True}
    assert server.process.poll() is None


def test_generated_requests_never_get_a_5xx(fuzz_server, routes) -> None:
    fuzz(fuzz_server, routes, examples=500)


@pytest.mark.slow
def test_thousands_of_generated_requests_never_get_a_5xx(fuzz_server, routes) -> None:
    fuzz(fuzz_server, routes, examples=5000)


def test_the_fuzzing_reaches_every_route(routes) -> None:
    """The route list is the app's: the web page and its assets, health, metrics, and the three APIs."""
    paths = {path for path, _ in routes}
    assert {"/", "/health", "/ready", "/metrics", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/images/generations",
            "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/options"} <= paths
