"""Fixtures for the example services' tests: a real ``vgi-flight serve`` process."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Served as ServedCli


@pytest.fixture
def serve_cli(serve: Callable[..., ServedCli]) -> Callable[..., ServedCli]:
    """``serve_cli(spec, env)`` runs ``vgi-flight serve spec --location grpc://127.0.0.1:0``."""

    def start(spec: str, env: dict[str, str] | None = None) -> ServedCli:
        return serve(spec, "--location", "grpc://127.0.0.1:0", env=env)

    return start


__all__ = ["ServedCli"]
