"""A broker restarted on its port is not refused because its old connections sit in TIME_WAIT."""

from __future__ import annotations

import socket

from fleet.embedded import port_in_use


def test_a_port_whose_server_just_died_is_free_again() -> None:
    # Given a server that accepted a connection and closed it first (its side goes to TIME_WAIT)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    assert port_in_use(port)
    conn.close()
    server.close()
    client.close()

    # Then the port counts as free: valkey-server binds it with SO_REUSEADDR
    assert not port_in_use(port)
