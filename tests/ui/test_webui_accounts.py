"""Web UI accounts: scrypt hashes, the users file and its command, login required beyond loopback, and the trainer's
events refused server-side to a rater (not only hidden)."""

from __future__ import annotations

import io
import json

import pytest

from expertkit.cli.main import main
from expertkit.core.config import load_config
from expertkit.core.errors import ConfigError
from expertkit.ui.accounts import add_user, hash_password, is_loopback, load_users, verify_password
from expertkit.ui.config import WebUIConfig


def test_a_password_is_stored_as_a_salted_scrypt_hash():
    h1, h2 = hash_password("s3cret"), hash_password("s3cret")
    assert h1.startswith("scrypt$16384$8$1$") and h1 != h2  # a salt of its own each time
    assert "s3cret" not in h1
    assert verify_password("s3cret", h1) and verify_password("s3cret", h2)
    assert not verify_password("s3cret!", h1) and not verify_password("s3cret", "scrypt$garbage")


def test_adduser_writes_a_private_users_file_and_the_ui_checks_against_it(tmp_path, monkeypatch, capsys):
    users = tmp_path / "conf" / "users.yaml"
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    assert main(["webui", "adduser", str(users), "alice", "--role", "trainer", "--password-stdin"]) == 0
    assert "added alice (trainer)" in capsys.readouterr().out
    add_user(users, "bob", "battery staple", "rater")
    assert users.stat().st_mode & 0o777 == 0o600 and "correct horse" not in users.read_text()
    accounts = load_users(users)
    assert accounts.check("alice", "correct horse") and accounts.role("alice") == "trainer"
    assert accounts.check("bob", "battery staple") and accounts.role("bob") == "rater"
    assert not accounts.check("alice", "battery staple") and not accounts.check("carol", "correct horse")
    assert accounts.role("carol") is None

    monkeypatch.setattr("sys.stdin", io.StringIO("x\n"))
    assert main(["webui", "adduser", str(users), "dave", "--role", "admin", "--password-stdin"]) == 1
    assert "unknown role 'admin'" in capsys.readouterr().err
    assert main(["webui", "adduser", str(users)]) == 1
    assert "usage: expertkit webui adduser" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        ("users: {alice: {password_hash: plain, role: trainer}}", "users.alice.password_hash"),
        (f"users: {{alice: {{password_hash: '{hash_password('x')}', role: admin}}}}", "users.alice.role"),
        ("users: {}", "names no user"),
        ("people: {}", "people"),
    ],
)
def test_a_bad_users_file_is_explained(tmp_path, text, message):
    path = tmp_path / "users.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="users file") as e:
        load_users(path)
    assert message in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_users(tmp_path / "missing.yaml")


def test_listening_beyond_loopback_needs_accounts(tmp_path, capsys):
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.10", "example.com"))
    assert main(["webui", "host=0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "host=0.0.0.0 listens beyond this machine" in err and "expertkit webui adduser" in err
    assert "Traceback" not in err
    assert load_config(WebUIConfig, None, {"host": "0.0.0.0", "users": "users.yaml"}).users == "users.yaml"


def test_a_rater_cannot_run_the_trainers_events_through_the_api(tmp_path):
    """Every event of the train / eval / export / promote tabs does nothing for a rater, whatever calls it."""
    import gradio as gr
    from gradio.context import LocalContext

    from expertkit.ui.app import build_app

    users = tmp_path / "users.yaml"
    add_user(users, "alice", "a", "trainer")
    add_user(users, "bob", "b", "rater")
    config = WebUIConfig(feedback_db=str(tmp_path / "f.sqlite"), saves_dir=str(tmp_path / "saves"), users=str(users))
    demo = build_app(config, accounts=load_users(users))
    tabs = {b.elem_id: b for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    assert not tabs["tab-train"].visible and not tabs["tab-promote"].visible and tabs["tab-compare"].visible

    def fn_of(elem_id: str):  # the function of the button with this elem_id
        button = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)
        return next(f for f in demo.fns.values() if any(t[0] == button._id for t in f.targets)).fn

    rollback = fn_of("promote-rollback")
    for user, expected in (("bob", {"__type__": "update"}), ("alice", "filled")):
        request = gr.Request(username=user)
        token = LocalContext.request.set(request)
        try:
            result = rollback("", "")
        finally:
            LocalContext.request.reset(token)
        assert result == expected or (expected == "filled" and "fill in alias and models" in result), (user, result)
    assert not (tmp_path / "saves" / "webui_jobs").exists()  # nothing started
    chat_send = fn_of("chat-send")  # the chat is everybody's: not wrapped
    assert not hasattr(chat_send, "__wrapped__")
    assert json.dumps(demo.config, default=str)  # the page still builds its config
