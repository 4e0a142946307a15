"""The engine tests' local engine: the tiny model with the identity adapter served as 'sail' (and the base as
'tiny'), one per test module."""

from __future__ import annotations

import asyncio

import pytest

from expertkit.engine.config import EngineConfig


@pytest.fixture(scope="module")
def engine(identity_adapter, tiny_model):
    from expertkit.engine.local import LocalEngine

    _, result = identity_adapter
    engine = LocalEngine(
        EngineConfig(
            model_name_or_path=str(tiny_model), adapter_name_or_path=result.output_dir, served_model_name="sail"
        )
    )
    yield engine
    asyncio.run(engine.close())
