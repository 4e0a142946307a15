"""`expertkit webui` keys: safe defaults, share links refused, chat model choices that contradict each other refused."""

from __future__ import annotations

import pytest

from expertkit.cli.main import main
from expertkit.core.config import describe_keys, load_config
from expertkit.core.errors import ConfigError
from expertkit.ui.config import WebUIConfig


def test_defaults_are_local_and_every_key_is_documented():
    config = WebUIConfig()
    assert (config.host, config.port, config.share, config.lang) == ("127.0.0.1", 7860, False, "en")
    assert not config.starts_server
    assert "sk-secret" not in repr(WebUIConfig(api_key="sk-secret"))
    text = describe_keys(WebUIConfig)
    assert all(name in text for name in WebUIConfig.model_fields)
    assert load_config(WebUIConfig, None, {"model_name_or_path": "m", "lang": "zh"}).starts_server


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"share": "true"}, "share links are off"),
        ({"server_url": "http://127.0.0.1:8000/v1", "adapter_name_or_path": "a"}, "server_url chats with"),
        ({"template": "qwen"}, "need model_name_or_path"),
        ({"server_url": "http://127.0.0.1:8000/v1", "kb_dir": "kb"}, "kb_dir belong to the server"),
        ({"model_name_or_path": "m", "web": "true"}, "web=true needs kb_dir"),
        ({"server_url": "127.0.0.1:8000"}, "http(s) URL"),
        ({"lang": "fr"}, "lang"),
        ({"prot": "1"}, "did you mean 'port'"),
    ],
)
def test_mistakes_are_explained(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(WebUIConfig, None, overrides)
    assert message in str(e.value)


def test_cli_refuses_share_without_a_traceback(capsys):
    assert main(["webui", "share=true"]) == 1
    err = capsys.readouterr().err
    assert "share links are off" in err and "Traceback" not in err


def test_the_ui_loads_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, expertkit.ui.app, expertkit.ui.chat, expertkit.ui.train_tab, expertkit.ui.stage_tabs; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_the_guide_lists_every_key_and_shows_every_tab():
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[2] / "docs" / "webui.md").read_text(encoding="utf-8")
    table = describe_keys(WebUIConfig, markdown=True).split("|---|---|---|\n", 1)[1]
    assert table.strip() in guide, "docs/webui.md: paste `describe_keys(WebUIConfig, markdown=True)`'s table again"
    for tab in ("chat", "compare", "train", "eval", "export"):
        image = Path(__file__).resolve().parents[2] / "docs" / "images" / f"webui-{tab}.png"
        assert f"images/webui-{tab}.png" in guide and image.is_file()


@pytest.mark.parametrize(
    "lang, words", [("en", ["Chat", "Compare", "Train", "Promote"]), ("zh", ["对话", "对比", "训练", "上线"])]
)
def test_the_page_is_built_in_each_language(tmp_path, lang, words):
    import json

    from expertkit.ui.app import build_app

    config = WebUIConfig(lang=lang, feedback_db=str(tmp_path / "f.sqlite"), saves_dir=str(tmp_path / "saves"))
    page = json.dumps(build_app(config).config, ensure_ascii=False, default=str)
    assert all(word in page for word in words)
    assert '"label": "lora_rank"' in page  # the train form's fields keep their YAML names in every language
