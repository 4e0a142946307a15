"""`expertkit demo stage=dpo`: the SFT round, then a DPO round on top of its adapter, printed side by side.

The test runs the real command on the session's tiny model (copied where the demo looks for its model, so the
demo does not build its bigger one) with a one-epoch SFT round, so that it stays quick; the DPO round is the
demo's own. On the demo's own model and SFT round the DPO answers become the chosen ones (6/6 against SFT's 2/6
when written); on the test's 0.35M-parameter model the check is the margin, which must grow on every pair."""

from __future__ import annotations

import json
import shutil

from expertkit.cli.main import main


def test_demo_stage_dpo_grows_the_chosen_margin_on_top_of_sft(tiny_model, tmp_path, monkeypatch, capsys):
    import expertkit.demo

    out = tmp_path / "demo"
    shutil.copytree(tiny_model, out / "tiny-model")
    monkeypatch.setattr(expertkit.demo, "SFT_EPOCHS", 1)  # the demo's 40 take minutes; the DPO round is unchanged

    assert main(["demo", "stage=dpo", "--output-dir", str(out)]) == 0

    printed = capsys.readouterr().out
    assert "=== base vs SFT vs DPO" in printed and "  DPO:      " in printed and "margin log p(chosen)" in printed
    resolved = (out / "dpo" / "expertkit_config.yaml").read_text()
    assert "stage: dpo" in resolved and f"adapter_name_or_path: {out / 'lora'}" in resolved  # reference: SFT model
    check = json.loads((out / "dpo" / "learning_check.json").read_text())
    assert check["pairs"] == 6
    assert check["mean_margin_tuned"] > check["mean_margin_start"] + 1.0
    assert check["margin_grew"] == check["pairs"]
    assert all(s["margin_tuned"] > s["margin_start"] for s in check["samples"])
    assert "chat with it: expertkit chat" in printed and str(out / "dpo") in printed


def test_demo_refuses_other_stages_and_keys(capsys):
    assert main(["demo", "stage=ppo"]) == 1
    assert "unknown demo stage 'ppo'" in capsys.readouterr().err
    assert main(["demo", "lora_rank=8"]) == 1
    assert "takes only stage=sft|dpo, not lora_rank" in capsys.readouterr().err
