"""Helpers for testing code built on peerflow: throw-away TLS certificates, real peers."""

from __future__ import annotations

from peerflow.testing.certs import TestPki, generate_test_pki

__all__ = ["TestPki", "generate_test_pki"]
