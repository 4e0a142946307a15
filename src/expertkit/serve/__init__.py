"""An OpenAI-compatible HTTP server in front of any `Engine`: `build_app(engine, config)` -> FastAPI.

    expertkit serve model_name_or_path=saves/tiny adapter_name_or_path=saves/tiny-lora api_key=sk-local

FastAPI and uvicorn come with `pip install 'expertkit[serve]'`; importing this package needs neither.
"""
