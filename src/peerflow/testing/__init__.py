"""Helpers for testing code built on peerflow: throw-away TLS certificates, real peers."""

from __future__ import annotations

from peerflow.testing.certs import TestPki, generate_test_pki
from peerflow.testing.peers import PeerProcess, serve_in_process, start_peer_process

__all__ = [
    "PeerProcess",
    "TestPki",
    "generate_test_pki",
    "serve_in_process",
    "start_peer_process",
]
