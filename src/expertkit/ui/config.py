"""Keys of `expertkit webui`: where to listen, which model to chat with, where runs and feedback live."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from expertkit.core.config import StageConfig
from expertkit.ui.accounts import is_loopback


class WebUIConfig(StageConfig):
    host: str = "127.0.0.1"
    """Address to listen on. 127.0.0.1 (the default) is this machine only; any other address (0.0.0.0: every
    interface) needs `users` (accounts with passwords): the UI can start training runs and read files."""

    port: int = Field(7860, ge=1, le=65535)
    """TCP port of the web UI."""

    share: bool = False
    """Gradio share links (a public tunnel through a third-party relay): always off in expertkit."""

    lang: Literal["en", "zh"] = "en"
    """Language of the labels: en (English) or zh (中文)."""

    server_url: str | None = None
    """Chat with this OpenAI-compatible /v1 URL (a running `expertkit serve`, Ollama, vLLM, ...). Unset with
    model_name_or_path: the UI starts `expertkit serve` itself."""

    api_key: str | None = Field(None, repr=False)
    """The key server_url expects (or set EXPERTKIT_API_KEY / OPENAI_API_KEY). Never logged."""

    model_name_or_path: str | None = None
    """Chat with this model: the UI starts `expertkit serve` on a free 127.0.0.1 port and stops it on exit. Also the
    model the train, eval and export forms start with."""

    adapter_name_or_path: str | None = None
    """With model_name_or_path: LoRA adapters to serve beside the base (a comma list, `name=path` or a run folder)."""

    template: str | None = None
    """With model_name_or_path: the chat template (unset: the tokenizer's own)."""

    kb_dir: str | None = None
    """With model_name_or_path: a knowledge base (`expertkit kb add ... kb_dir=DIR`) for the chat's "Knowledge base"
    toggle: the UI's `expertkit serve` answers from it and lists the numbered sources under the answer."""

    web: bool = False
    """With model_name_or_path and kb_dir: allow the chat's "Web search" toggle (DuckDuckGo; pages read are added to
    kb_dir). Another search provider: run `expertkit serve ... web=true search_provider=...` and use server_url."""

    saves_dir: str = "saves"
    """Where training runs are listed from (any folder below holding a run), and where the UI puts its own jobs."""

    dataset_dir: str = "data"
    """The dataset_dir the train form starts with (its dataset_info.json fills the dataset picker)."""

    feedback_db: str | None = None
    """SQLite file for chats, thumbs up / down, edited answers and arena votes (unset: ~/.expertkit/feedback.sqlite)."""

    users: str | None = None
    """Accounts file (users.yaml: names, scrypt password hashes, roles rater / trainer; `expertkit webui adduser`
    writes it). Set: every page needs a login and every rating records who gave it. Required with a host beyond
    loopback."""

    models: str | None = None
    """The models file the chat server serves (`expertkit serve models=...`): the Compare tab offers its aliases'
    A/B arms, and the Promote tab's buttons promote into it and roll it back."""

    @field_validator("share")
    @classmethod
    def _no_share(cls, v: bool) -> bool:
        if v:
            raise ValueError(
                "share links are off in expertkit: they publish the UI (which can start jobs and read files) "
                "through a public relay; use host=0.0.0.0 behind your own proxy instead"
            )
        return v

    @field_validator("server_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL ending in /v1, e.g. http://127.0.0.1:8000/v1")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _one_chat_model(self) -> WebUIConfig:
        server_keys = [k for k in ("adapter_name_or_path", "template", "kb_dir", "web") if getattr(self, k)]
        if self.server_url and server_keys:
            raise ValueError(
                f"server_url chats with a running server: {', '.join(server_keys)} belong to the server (start it "
                "with them, or drop server_url and let the UI start `expertkit serve`)"
            )
        if server_keys and not self.model_name_or_path:
            raise ValueError(f"{', '.join(server_keys)} need model_name_or_path (the model the UI serves)")
        if not self.users and not is_loopback(self.host):
            raise ValueError(
                f"host={self.host} listens beyond this machine, and the UI can start jobs and read files: it needs "
                "accounts. Make them with `expertkit webui adduser users.yaml NAME --role trainer`, then add "
                "users=users.yaml (or keep host=127.0.0.1)"
            )
        if self.web and not self.kb_dir:
            raise ValueError("web=true needs kb_dir: the pages a web search reads are added to that knowledge base")
        return self

    @property
    def starts_server(self) -> bool:
        """Whether the UI starts its own `expertkit serve` for the chat tab."""
        return bool(self.model_name_or_path) and not self.server_url
