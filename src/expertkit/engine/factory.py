"""The engine a config asks for: the one place that knows every concrete engine (engine/base.py knows none).

    from expertkit.engine.factory import load_engine
    engine = load_engine(EngineConfig(engine="openai", base_url="http://127.0.0.1:8000/v1"))

Each engine is imported only when asked for, so a remote engine never imports torch and vLLM is never imported
unless `engine=vllm`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from expertkit.engine.base import Engine
    from expertkit.engine.config import EngineConfig


def load_engine(config: EngineConfig) -> Engine:
    """The engine a config asks for (`engine` key): local transformers, a remote OpenAI-compatible URL, or vLLM."""
    if config.engine == "openai":
        from expertkit.engine.remote import RemoteEngine

        return RemoteEngine(config)
    if config.engine == "vllm":
        from expertkit.engine.vllm_engine import VllmEngine

        return VllmEngine(config)
    from expertkit.engine.local import LocalEngine

    return LocalEngine(config)
