"""Hostile input against a real server (issue 13): each case the issue names is refused with a 4xx in the shape of
the route's API, before anything is stored or run, and the history stays readable."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

NATIVE, OPENAI, TXT2IMG, IMG2IMG, OPTIONS = ("/v1/jobs", "/v1/images/generations", "/sdapi/v1/txt2img",
                                             "/sdapi/v1/img2img", "/sdapi/v1/options")
BODY_ROUTES = (NATIVE, OPENAI, TXT2IMG, IMG2IMG, OPTIONS)  # every route that reads a body
INVALID_STATUS = {OPENAI: 400}  # OpenAI's clients expect 400 where the native and A1111 APIs answer 422
JSON = {"Content-Type": "application/json"}


def error_message(path: str, response: httpx.Response) -> str:
    """The message of an error answer, checked to have the shape of the route's API."""
    body = response.json()
    if path == OPENAI:
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        return body["error"]["message"]
    if path.startswith("/sdapi/"):
        assert set(body) == {"error", "detail", "body", "errors"}, body
    return body["detail"]


def job_ids(client: httpx.Client) -> set[str]:
    response = client.get("/v1/jobs", params={"limit": 200})
    assert response.status_code == 200, response.text
    return {job["id"] for job in response.json()["jobs"]}


@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"prompt": "a \\ud800 cat", "recipe": "sdxl-turbo"}', "prompt is not valid text"),
        (b'{"prompt": "7", "\\udc80": 1}', "a name in the body is not valid text"),
        (b'{"prompt": "7", "seed": ' + b"9" * 5000 + b"}", "a whole number of 5000 digits"),
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 32 levels"),
        (b'{"prompt": "7", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "nests deeper than 32 levels"),
        (b'{"prompt": "7", "eta": NaN}', "NaN is not a number JSON allows"),
        (b'{"prompt": "7", "s_tmax": -Infinity}', "-Infinity is not a number JSON allows"),
        (b'{"prompt": "7", "cfg_scale": 1e400}', "the number 1e400 is beyond the range"),
        (b'{"prompt": "\xff"}', "is not valid JSON"),
    ],
    ids=["surrogate", "surrogate-name", "5000-digits", "100000-deep", "41-deep", "nan", "infinity", "overflow",
         "not-utf8"],
)
def test_json_no_answer_could_echo_is_refused_on_every_route(server, path, body, message) -> None:
    with server.client() as client:
        before = job_ids(client)
        response = client.post(path, content=body, headers=JSON)
        assert response.status_code == INVALID_STATUS.get(path, 422), response.text
        assert message in error_message(path, response)
        assert job_ids(client) == before  # nothing stored, and the history still answers


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (NATIVE, {"prompt": "7", "num_inference_steps": True}, "num_inference_steps: Input should be a valid integer"),
        (NATIVE, {"prompt": "7", "guidance_scale": True}, "guidance_scale: Input should be a valid number"),
        (NATIVE, {"prompt": "7", "seed": 5.0}, "seed: Input should be a valid integer"),
        (NATIVE, {"prompt": "7", "num_images": "2"}, "num_images: Input should be a valid integer"),
        (NATIVE, {"prompt": "7", "loras": [{"name": "x", "weight": True}]}, "loras.0"),
        (OPENAI, {"prompt": "7", "n": True}, "n: Input should be a valid integer"),
        (OPENAI, {"prompt": "7", "num_inference_steps": True}, "num_inference_steps: Input should be a valid integer"),
        (TXT2IMG, {"prompt": "7", "steps": True}, "steps: Input should be a valid integer"),
        (TXT2IMG, {"prompt": "7", "batch_size": 2.0}, "batch_size: Input should be a valid integer"),
        (IMG2IMG, {"prompt": "7", "init_images": ["x"], "denoising_strength": False},
         "denoising_strength: Input should be a valid number"),
    ],
)
def test_a_bool_or_float_is_no_whole_number(server, path, body, message) -> None:
    """`"steps": true` was taken as one step: every route takes its types strictly."""
    with server.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == INVALID_STATUS.get(path, 422), response.text
    assert message in error_message(path, response)


FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(("path", "content_type"), [(path, content_type) for path in BODY_ROUTES
                                                    for content_type in ("text/plain", FORM, None)
                                                    if (path, content_type) != (NATIVE, FORM)])  # native takes forms
def test_json_is_taken_only_as_application_json(server, path, content_type) -> None:
    """A web page elsewhere can POST text/plain without the browser asking first: JSON comes as JSON only."""
    headers = {"Content-Type": content_type} if content_type else {}
    with server.client() as client:
        response = client.post(path, content=b'{"prompt": "7"}', headers=headers)
    assert response.status_code == 415, response.text
    assert "Content-Type: application/json" in error_message(path, response)


def test_a1111_fields_that_are_only_echoed_must_be_finite_too(server) -> None:
    """Infinity in a field A1111 only echoes used to run the job and then fail to answer: now nothing runs."""
    with server.client() as client:
        before = job_ids(client)
        response = client.post(TXT2IMG, content=b'{"prompt": "7", "seed": 1, "s_noise": Infinity}', headers=JSON)
        assert response.status_code == 422 and "Infinity" in error_message(TXT2IMG, response)
        assert job_ids(client) == before
        echoed = client.post(TXT2IMG, json={"prompt": "7", "seed": 1, "s_noise": 1.5, "comment": "caf\u00e9 \u2603"})
    assert echoed.status_code == 200, echoed.text
    assert echoed.json()["parameters"]["comment"] == "caf\u00e9 \u2603"  # text beyond ASCII is fine


def test_multipart_options_must_be_a_field_not_a_file(server) -> None:
    with server.client() as client:
        as_file = client.post(NATIVE, files={"options": ("options.json", b'{"prompt": "7"}', "application/json")})
        surrogate = client.post(NATIVE, files={"options": (None, b'{"prompt": "a \\ud800"}')})  # a plain field
    assert as_file.status_code == 422 and "not a file" in as_file.json()["detail"]
    assert surrogate.status_code == 422 and "prompt is not valid text" in surrogate.json()["detail"]


@pytest.mark.parametrize(
    ("query", "status", "page"),
    [
        ("offset=1e30", 422, None),
        ("offset=" + "9" * 40, 200, (2**63 - 1, 50)),
        ("offset=" + "9" * 5000, 422, None),
        ("offset=-5&limit=0", 200, (0, 1)),
        ("limit=1000000", 200, (0, 200)),
        ("limit=2.5", 422, None),
        ("limit=true", 422, None),
    ],
)
def test_history_query_numbers_are_clamped_or_refused(server, query, status, page) -> None:
    with server.client() as client:
        response = client.get(f"/v1/jobs?{query}")
    assert response.status_code == status, response.text
    if page is not None:
        assert (response.json()["offset"], response.json()["limit"]) == page


def chunks(total: int) -> Iterator[bytes]:
    """A body sent chunked: no Content-Length for the server to refuse it by."""
    size = 1024 * 1024
    for _ in range(total // size):
        yield b" " * size


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_chunked_body_over_the_limit_is_413(server, path) -> None:
    with server.client() as client:
        response = client.post(path, content=chunks(40 * 1024 * 1024), headers=JSON)
        assert response.status_code == 413, response.text
        assert client.get("/health").status_code == 200


def test_a_chunked_form_over_the_limit_is_413(server) -> None:
    head = b'--b\r\nContent-Disposition: form-data; name="init_image"; filename="a.png"\r\n\r\n'
    with server.client() as client:
        response = client.post(NATIVE, content=[head, *chunks(40 * 1024 * 1024), b"\r\n--b--\r\n"],
                               headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413, response.text


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_the_key_is_checked_before_the_body_is_read(server, path) -> None:
    """The headers announce 12.6 MB and only one byte follows: the answer comes now only if the key is checked
    first (a server that read the body first would wait for the rest, and spend CPU and memory on it)."""
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=20) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: 12600000\r\n\r\n{{".encode())
        answer = connection.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 401 "), answer


@pytest.mark.parametrize("body", [{"prompt": "a", "recipe": "sd15", "loras": ["x" * 300]},
                                  {"prompt": "a <lora:" + "x" * 300 + ":1>", "recipe": "sd15"}])
def test_a_lora_name_longer_than_a_file_name_is_refused(server, body) -> None:
    with server.client() as client:
        response = client.post(NATIVE, json=body)
    assert response.status_code == 422, response.text
    assert "longer than a file name may be" in response.json()["detail"]
