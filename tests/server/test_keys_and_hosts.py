"""The key from a file (out of `ps`), and the host names a keyless server answers to (`--allowed-hosts`)."""

from __future__ import annotations

import subprocess
import sys

import httpx
from server.conftest import start_server, stop_server


def test_the_key_may_come_from_a_file(server_env, tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("file-key-0123456789\n")
    server = start_server(tmp_path / "data", {**server_env, "IMAGEGEN_API_KEY": ""}, "--api-key-file",
                          str(key_file), api_key=None)
    try:
        assert httpx.get(f"{server.url}/v1/recipes").status_code == 401
        keyed = httpx.get(f"{server.url}/v1/recipes", headers={"Authorization": "Bearer file-key-0123456789"})
        assert keyed.status_code == 200
        assert "file-key" not in " ".join(server.process.args)  # nothing in the process's command line
    finally:
        stop_server(server)
    (tmp_path / "empty").write_text("\n")
    refused = subprocess.run([sys.executable, "-m", "imagegen.cli", "serve", "--data-dir", str(tmp_path / "other"),
                              "--api-key-file", str(tmp_path / "empty")], env=server_env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and f"--api-key-file {tmp_path / 'empty'} is empty" in refused.stderr


def test_a_keyless_server_answers_the_names_it_is_given(server_env, tmp_path) -> None:
    server = start_server(tmp_path / "data", server_env, "--allowed-hosts", "render.lan", api_key=None)
    try:
        port = server.url.rsplit(":", 1)[1]
        named = httpx.get(f"{server.url}/v1/recipes", headers={"Host": f"render.lan:{port}"})
        other = httpx.get(f"{server.url}/v1/recipes", headers={"Host": f"attacker.example:{port}"})
    finally:
        stop_server(server)
    assert named.status_code == 200
    assert other.status_code == 403 and "is not this server's name" in other.json()["detail"]
