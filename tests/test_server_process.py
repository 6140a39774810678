"""ServerProcess against a real `bentoml serve`: how it starts when the machine is crowded."""

from __future__ import annotations

import socket

import httpx

import serving.process as process


def test_a_server_whose_free_port_was_taken_meanwhile_starts_on_another(tiny_models, tmp_path, monkeypatch):
    """free_port() can hand out a port that another process binds before the server does (many test
    suites on one machine); the server must then start on a new port instead of failing."""
    home, _ = tiny_models
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    ports = iter([taken])
    real_free_port = process.free_port
    monkeypatch.setattr(process, "free_port", lambda host="127.0.0.1": next(ports, None) or real_free_port(host))
    try:
        with process.ServerProcess({"models": "vit", "intra_op_threads": 1}, store=home, ready_timeout=180) as srv:
            assert srv.port != taken
            assert httpx.get(srv.url + "/readyz", timeout=30).status_code == 200
    finally:
        squatter.close()
