"""Fixtures for peer-layer tests: a throw-away TLS PKI, generated once per session."""

from __future__ import annotations

import pytest

from peerflow.testing import TestPki, generate_test_pki


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """CA, server, client (a, b), other-CA client and expired client certificates."""
    return generate_test_pki(tmp_path_factory.mktemp("pki"))
