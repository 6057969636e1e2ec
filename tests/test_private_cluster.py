"""The private PostgreSQL cluster `syncd demo` starts when no server answers (and the
tests start when SYNCD_TEST_DSN does not answer): its port is picked when it is made,
and a port something took before its first start is given up for another."""

from __future__ import annotations

import socket

import pytest

from syncd.demo.server import ServerError
from tests.support.pgcluster import Cluster, answers


def squat(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_port_taken_before_the_first_start_is_given_up_for_another():
    cluster = Cluster.create()
    taken = cluster.port
    squatter = squat(taken)
    try:
        cluster.start()
        assert cluster.port != taken
        assert answers(cluster.dsn)
        assert f":{cluster.port}/" in cluster.dsn
    finally:
        squatter.close()
        cluster.destroy()


def test_a_restarted_cluster_keeps_its_port_or_fails():
    cluster = Cluster.create()
    try:
        cluster.start()
        port = cluster.port
        cluster.stop()
        squatter = squat(port)
        try:
            # clients know it by that port: it does not move, it says it did not start
            with pytest.raises(ServerError, match="did not start"):
                cluster.start(timeout=10)
            assert cluster.port == port
        finally:
            squatter.close()
        cluster.start()
        assert cluster.port == port
        assert answers(cluster.dsn)
    finally:
        cluster.destroy()
