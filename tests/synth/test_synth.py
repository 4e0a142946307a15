"""`expertkit data synth` against a scripted OpenAI-compatible teacher on 127.0.0.1 (teacher_server.py): the dataset
passes `data check`, every quote is in its chunk, re-runs ask nothing, a killed run resumes, changed files are the
only ones asked again, and bad replies / bad teachers / bad documents end in clear messages with the rows kept."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from teacher_server import teacher_server

from expertkit.cli.main import main
from expertkit.core.errors import ConfigError, ExpertkitError
from expertkit.synth.config import SynthConfig
from expertkit.synth.run import run

PUMP = """# Pump manual

## Maintenance

The seal of the P-200 pump is replaced every 2,000 operating hours. Bearings are greased every 500 hours with
lithium grease. A leaking seal must be replaced at once.
"""
VALVE = """# Valves

The suction valve is opened before the pump starts. The pressure valve opens at 6 bar. Valves are inspected yearly.
"""
ZH = "水泵的密封件每运行两千小时更换一次。轴承每五百小时用锂基润滑脂润滑。启动水泵之前必须打开吸入阀。\n"


THINGS = ["compressor", "boiler", "turbine", "conveyor", "crane", "furnace", "mixer", "generator"]
PLACES = ["harbour warehouse", "north quarry", "river mill", "old foundry", "glass works", "paper plant",
          "salt mine", "brick kiln"]  # fmt: skip


COLOURS = ["red", "grey", "green", "blue", "yellow", "orange", "purple", "white"]
PARTS = ["base", "top", "door", "pipes", "ladder", "chimney", "wheels", "handle"]


def distinct_docs(n: int) -> dict[str, str]:
    """n one-chunk documents whose questions are far apart (no near-duplicates between them)."""
    return {f"d{i}.txt": f"The {THINGS[i]} stands in the {PLACES[i]}. Nobody has moved the {THINGS[i]} since "
            f"{PLACES[(i + 3) % n]} closed. Its paint is {COLOURS[i]}ish, peeling near the {PARTS[i]}."
            for i in range(n)}  # fmt: skip


def write_docs(folder: Path, docs: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def synth(inputs, url: str, out: Path, **keys) -> object:
    keys = {"chunk_size": 400, "chunk_overlap": 0, "eval_size": 0.0, "retry_backoff": 0.0, **keys}
    return run(SynthConfig(inputs=[str(i) for i in inputs], teacher_base_url=url, output_dir=str(out), **keys))


def rows(out: Path) -> tuple[list[dict], list[dict]]:
    train = json.loads((out / "train.json").read_text(encoding="utf-8"))
    held = [json.loads(line) for line in (out / "eval.jsonl").read_text(encoding="utf-8").splitlines()]
    return train, held


def chunk_texts(out: Path) -> dict[str, str]:
    with sqlite3.connect(out / "synth_state.sqlite") as db:
        return dict(db.execute("SELECT chunk_id, text FROM chunks").fetchall())


def test_dataset_passes_check_and_every_quote_is_in_its_chunk(tmp_path, tiny_model, capsys):
    thinking = VALVE.replace("yearly.", "yearly. [think]")
    fenced = "The fan runs at 900 rpm. [fence] It is quiet."
    docs = write_docs(tmp_path / "docs", {"pump.md": PUMP, "valves.md": thinking, "zh.txt": ZH, "fenced.txt": fenced})
    out = tmp_path / "hb"
    with teacher_server() as (teacher, url):
        assert main(["data", "synth", str(docs), f"teacher_base_url={url}", f"output_dir={out}", "eval_size=0.3",
                     "chunk_size=400", "chunk_overlap=0"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "sent to the teacher" in printed and "train rows" in printed
    train, held = rows(out)
    assert train and held and len(train) + len(held) == 3 + 3 + 3 + 2
    texts = chunk_texts(out)
    for row in train + held:
        source = row["source"]
        assert source["quote"] in texts[source["chunk_id"]], row
        assert source["file"].startswith(str(docs.resolve()))
    for row in held:
        assert row["context"] == texts[row["source"]["chunk_id"]] and row["reference"]
    from expertkit.evaluate.evalset import read_qa_jsonl  # `expertkit eval eval_file=eval.jsonl` reads it

    assert [item.reference for item in read_qa_jsonl(out / "eval.jsonl")] == [row["reference"] for row in held]
    pump = [r for r in train + held if r["source"]["file"].endswith("pump.md")]
    assert {r["source"]["section"] for r in pump} == {"Pump manual"}
    # Chinese chunks get the Chinese prompts, English ones the English prompts
    zh_calls = [c for c in teacher.calls if "水泵" in c["chunk"]]
    assert zh_calls and all("只回复" in c["system"] for c in zh_calls)
    assert all("Reply with only" in c["system"] for c in teacher.calls if "pump" in c["chunk"].lower())
    info = json.loads((out / "dataset_info.json").read_text())
    assert info == {"hb": {"file_name": "train.json", "formatting": "alpaca",
                           "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}  # fmt: skip
    assert main(["data", "check", f"model_name_or_path={tiny_model}", "dataset=hb", f"dataset_dir={out}"]) == 0
    assert "ready to train" in capsys.readouterr().out


def test_rerun_asks_nothing_and_a_changed_file_only_its_chunks(tmp_path):
    docs = write_docs(tmp_path / "docs", {"pump.md": PUMP, "valves.md": VALVE, "zh.txt": ZH})
    out = tmp_path / "out"
    with teacher_server() as (teacher, url):
        first = synth([docs], url, out)
        made = len(teacher.calls)
        assert first.asked == 3 and made == 3 * 5  # per chunk: questions, 3 answers, judge
        log = [json.loads(line) for line in (out / "synth_log.jsonl").read_text().splitlines()]
        assert [r["chunks_done"] for r in log] == [1, 2, 3] and log[-1]["chunks_total"] == 3
        assert log[-1]["requests"] == made and log[-1]["prompt_tokens"] > 0
        train_before = (out / "train.json").read_text()
        again = synth([docs], url, out)
        assert len(teacher.calls) == made and again.asked == 0 and again.cached == 3
        assert (out / "train.json").read_text() == train_before
        (docs / "valves.md").write_text(VALVE.replace("6 bar", "8 bar"), encoding="utf-8")
        changed = synth([docs], url, out)
    asked = teacher.calls[made:]
    assert changed.asked == 1 and {c["chunk"] for c in asked} == {VALVE.replace("6 bar", "8 bar").strip()}
    train, _ = rows(out)
    assert len(train) == 9
    assert any("8 bar" in r["output"] for r in train) and not any("6 bar" in r["output"] for r in train)


def test_another_teacher_asks_again_and_switching_back_asks_nothing(tmp_path):
    docs = write_docs(tmp_path / "docs", {"pump.md": PUMP})
    out = tmp_path / "out"
    with teacher_server() as (teacher, url):
        assert synth([docs], url, out, teacher_model="teacher").asked == 1
        assert synth([docs], url, out, teacher_model="teacher").asked == 0
        made = len(teacher.calls)
        other = synth([docs], url, out, teacher_model="teacher-2")  # same server, another model: its own answers
        assert other.asked == 1 and other.cached == 0
        assert len(teacher.calls) == made + 5 and {c["model"] for c in teacher.calls[made:]} == {"teacher-2"}
        assert synth([docs], url, out, teacher_model="teacher").asked == 0  # the first teacher's rows are kept
        assert synth([docs], url, out).asked == 1  # teacher_model unset: known by its URL, a teacher of its own
    with sqlite3.connect(out / "synth_state.sqlite") as db:
        assert db.execute("SELECT count(*) FROM chunks WHERE status = 'done'").fetchone() == (3,)


def test_another_teacher_keeps_the_same_chunks_held_out(tmp_path):
    """The split is by chunk text: rows another teacher writes for a chunk a model trained on never land in eval
    (it was by the state key, which names the teacher; for a URL, its port, so a test teacher on a random port
    sometimes put every chunk on one side)."""
    docs = write_docs(tmp_path / "docs", distinct_docs(8))
    out = tmp_path / "out"
    held = []
    with teacher_server() as (_, url):
        for model in ("teacher", "teacher-2"):
            assert synth([docs], url, out, teacher_model=model, eval_size=0.5).asked == 8
            train, held_rows = rows(out)
            assert train and held_rows and len(train) + len(held_rows) == 8 * 3
            held.append({r["source"]["chunk_id"] for r in held_rows})
    assert held[0] == held[1]


def test_a_killed_run_resumes_without_duplicates(tmp_path):
    docs = write_docs(tmp_path / "docs", distinct_docs(8))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with teacher_server(latency=0.05) as (teacher, url):
        command = [sys.executable, "-m", "expertkit", "data", "synth", str(docs), f"teacher_base_url={url}",
                   f"output_dir={out}", "concurrency=1", "eval_size=0"]  # fmt: skip
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while done_chunks(out) < 2 and time.time() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        finished = done_chunks(out)
        assert 2 <= finished < 8 and not (out / "train.json").exists()
        before = len(teacher.tasks("questions"))
        result = synth([docs], url, out, chunk_size=1500, chunk_overlap=100, near_dup_threshold=1.0)
    assert result.asked == 8 - finished and result.cached == finished
    assert len(teacher.tasks("questions")) - before == 8 - finished
    train, _ = rows(out)
    questions = [r["instruction"] for r in train]
    assert len(questions) == len(set(questions)) == 8 * 3


def done_chunks(out: Path) -> int:
    try:
        with sqlite3.connect(out / "synth_state.sqlite", timeout=1) as db:
            return db.execute("SELECT count(*) FROM chunks WHERE status='done'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_429_and_5xx_are_retried_honouring_retry_after(tmp_path):
    docs = write_docs(tmp_path / "docs", {"pump.md": PUMP})
    with teacher_server(faults=[(429, {"Retry-After": "1"}), (503, {}), (500, {})]) as (teacher, url):
        start = time.monotonic()
        result = synth([docs], url, tmp_path / "out", retry_backoff=0.01)
        took = time.monotonic() - start
    assert [c["status"] for c in teacher.calls[:4]] == [429, 503, 500, 200]
    assert took >= 1.0  # the 429's Retry-After, not the 10 ms backoff
    assert result.tally.retries == 3 and result.counts.train_rows == 3 and result.counts.chunks_failed == 0
    assert result.tally.prompt_tokens > 0 and result.tally.completion_tokens > 0


def test_bad_replies_fail_only_their_chunk_with_the_reply_kept(tmp_path):
    docs = write_docs(tmp_path / "docs", {
        "good.md": PUMP,
        "garbage.txt": "The belt is changed monthly. [garbage] It is black.",
        "once.txt": "The filter is changed weekly. [garbage-once] It is white.",
        "long.txt": "The motor has 4 kW of power. [toolong] It is blue.",
        "quote.txt": "The tank holds 300 litres. [badquote] It is steel.",
        "low.txt": "The gauge reads [low] bar. The dial is round.",
    })  # fmt: skip
    out = tmp_path / "out"
    with teacher_server() as (_, url):
        result = synth([docs], url, out)
    failed = {json.loads(line)["file"].rsplit("/", 1)[1]: json.loads(line) for line in
              (out / "failed.jsonl").read_text().splitlines()}  # fmt: skip
    assert set(failed) == {"garbage.txt", "long.txt"}
    assert "could not be read" in failed["garbage.txt"]["error"] and "Sure!" in failed["garbage.txt"]["reply"]
    assert (
        "too long for the teacher's context" in failed["long.txt"]["error"]
        and "chunk_size" in failed["long.txt"]["error"]
    )
    train, _ = rows(out)
    files = {r["source"]["file"].rsplit("/", 1)[1] for r in train}
    assert files == {"good.md", "once.txt", "low.txt"}
    assert result.counts.removed["quote not in the chunk"] == 2
    assert result.counts.removed["judge score below min_score=7"] == 1
    assert all("[low]" not in r["instruction"] for r in train)


def test_a_refused_key_stops_the_run_and_keeps_the_rows_written(tmp_path):
    docs = write_docs(tmp_path / "docs", {"pump.md": PUMP})
    out = tmp_path / "out"
    with teacher_server(api_key="sk-right") as (teacher, url):
        synth([docs], url, out, teacher_api_key="sk-right")
        write_docs(docs, {"valves.md": VALVE})
        with pytest.raises(ExpertkitError) as e:
            synth([docs], url, out, teacher_api_key="sk-wrong")
    assert "refused the key (HTTP 401)" in str(e.value) and "teacher_api_key" in str(e.value)
    assert "3 rows of the chunks finished so far are written" in str(e.value) and "goes on from there" in str(e.value)
    assert [c["status"] for c in teacher.calls].count(401) == 1  # no retry of a 401, no other request after it
    resolved = (out / "expertkit_config.yaml").read_text()
    assert "teacher_base_url: http://127.0.0.1" in resolved and "sk-" not in resolved
    assert len(rows(out)[0]) == 3


def test_an_unreachable_teacher_is_named(tmp_path):
    from live_server import free_port

    docs = write_docs(tmp_path / "docs", {"pump.md": PUMP})
    with pytest.raises(ExpertkitError) as e:
        synth([docs], f"http://127.0.0.1:{free_port()}/v1", tmp_path / "out", max_retries=1)
    assert "cannot reach the teacher at http://127.0.0.1:" in str(e.value) and "is the server running" in str(e.value)


def test_documents_with_nothing_readable_are_explained(tmp_path):
    from pypdf import PdfWriter

    scans = tmp_path / "scans"
    scans.mkdir()
    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    with open(scans / "scan.pdf", "wb") as fh:
        writer.write(fh)
    with pytest.raises(ExpertkitError) as e:
        synth([scans], "http://127.0.0.1:9/v1", tmp_path / "out")
    assert "scan.pdf: the PDF holds no text" in str(e.value) and "ocrmypdf" in str(e.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.bin").write_bytes(b"\0")
    with pytest.raises(ExpertkitError, match="holds no documents"):
        synth([tmp_path / "empty"], "http://127.0.0.1:9/v1", tmp_path / "out")


def test_raft_rows_in_sharegpt_pass_check(tmp_path, tiny_model):
    docs = write_docs(tmp_path / "docs", distinct_docs(6))
    out = tmp_path / "raft"
    with teacher_server() as (_, url):
        synth([docs], url, out, raft=True, raft_distractors=2, raft_p=0.5, format="sharegpt")
    train, _ = rows(out)
    texts = chunk_texts(out)
    oracle = [r for r in train if r["source"]["oracle"]]
    without = [r for r in train if not r["source"]["oracle"]]
    assert oracle and without
    for row in train:
        question, answer = (t["value"] for t in row["conversations"])
        assert question.count("<DOCUMENT>") == 3 if row["source"]["oracle"] else question.count("<DOCUMENT>") == 2
        assert (texts[row["source"]["chunk_id"]] in question) == row["source"]["oracle"]
        assert answer.startswith(f"##begin_quote##{row['source']['quote']}##end_quote##")
    assert main(["data", "check", f"model_name_or_path={tiny_model}", "dataset=raft", f"dataset_dir={out}"]) == 0


def test_prompts_are_shown_and_overridable(tmp_path, capsys):
    import yaml

    assert main(["data", "synth", "--show-prompts"]) == 0
    shipped = yaml.safe_load(capsys.readouterr().out)
    assert set(shipped) == {"en", "zh"} and set(shipped["en"]) == {"system", "questions", "answer", "judge"}
    mine = tmp_path / "prompts.yaml"
    mine.write_text(yaml.safe_dump({"en": {"questions": shipped["en"]["questions"].replace("Write", "PLEASE write")}}))
    docs = write_docs(tmp_path / "docs", {"pump.md": PUMP})
    with teacher_server() as (teacher, url):
        synth([docs], url, tmp_path / "out", prompts=str(mine))
    assert "PLEASE write 3 different questions" in teacher.tasks("questions")[0]["prompt"]
    mine.write_text(yaml.safe_dump({"en": {"answer": "no placeholders", "greeting": "hi"}, "fr": {}}))
    with pytest.raises(ConfigError) as e:
        synth([docs], url, tmp_path / "out", prompts=str(mine))
    assert "{chunk}, {question}" in str(e.value) and "unknown prompt 'greeting'" in str(e.value)
    assert "unknown language 'fr'" in str(e.value)


def test_the_teacher_speaks_openai(tmp_path):
    """The scripted teacher answers the real openai client (the non-streamed path) as it answers our engine."""
    from openai import OpenAI

    with teacher_server() as (_, url):
        client = OpenAI(base_url=url, api_key="unused")
        prompt = 'Reply with {"questions": []}\n<chunk>\nThe seal is replaced yearly.\n</chunk>'
        reply = client.chat.completions.create(model="teacher", messages=[{"role": "user", "content": prompt}])
        assert json.loads(reply.choices[0].message.content) == {
            "questions": ["What does the text say about: The seal is replaced yearly.?"]
        }
        assert reply.usage.prompt_tokens > 0 and [m.id for m in client.models.list()] == ["teacher"]


def test_a_local_model_teacher_runs_through_our_engine(tmp_path, tiny_model):
    """teacher_model_name_or_path: the tiny random model writes no JSON, so its chunk fails with the reply kept."""
    docs = write_docs(tmp_path / "docs", {"pump.md": PUMP})
    out = tmp_path / "out"
    result = run(SynthConfig(inputs=[str(docs)], teacher_model_name_or_path=str(tiny_model), output_dir=str(out),
                             max_tokens=16, eval_size=0.0))  # fmt: skip
    assert result.counts.chunks_failed == 1 and result.tally.requests == 2  # the questions, asked twice
    failed = json.loads((out / "failed.jsonl").read_text())
    assert "could not be read twice" in failed["error"] and failed["reply"] and failed["chunk"].startswith("# Pump")
    assert json.loads((out / "train.json").read_text()) == []


def test_urls_are_read_through_the_guarded_fetcher(tmp_path):
    with teacher_server() as (_, url):
        page = url.removesuffix("/v1") + "/docs/pump.html"
        with pytest.raises(ExpertkitError) as e:  # loopback is refused unless allowed (the SSRF guard)
            synth([page], url, tmp_path / "refused")
        assert "nothing to synthesize" in str(e.value) and "127.0.0.1" in str(e.value)
        result = synth([page], url, tmp_path / "out", allow_networks="127.0.0.1/32")
    train, _ = rows(tmp_path / "out")
    assert result.counts.train_rows == 3 and {r["source"]["file"] for r in train} == {page}
    assert all("Home | Products" not in r["source"]["quote"] for r in train)


def test_pdf_rows_name_their_page(tmp_path):
    from pdf_files import make_pdf

    docs = tmp_path / "docs"
    docs.mkdir()
    pages = [["The gearbox oil is changed every 4,000 hours.", "Its level is checked weekly."],
             ["The clutch plates are replaced after 9,000 hours.", "Worn plates make the drive slip."]]  # fmt: skip
    (docs / "gearbox.pdf").write_bytes(make_pdf(pages))
    out = tmp_path / "out"
    with teacher_server() as (_, url):
        synth([docs], url, out, chunk_size=60)
    train, _ = rows(out)
    assert {r["source"]["page"] for r in train} == {"1", "2"} and all("section" not in r["source"] for r in train)
    for row in train:
        assert ("clutch" in row["source"]["quote"].lower() or "plates" in row["source"]["quote"]) == (
            row["source"]["page"] == "2"
        )


def test_a_chunk_too_long_for_the_teacher_is_asked_in_pieces(tmp_path):
    from expertkit.synth.prompts import load_prompts

    text = " ".join(f"The {THINGS[i % 8]} number {i} was serviced by the {PLACES[i % 8]} crew in week {i * 3}."
                    for i in range(40))  # fmt: skip
    docs = write_docs(tmp_path / "docs", {"log.txt": text})
    whole = load_prompts().render("en", "questions", chunk=text, n="3", title="log")
    out = tmp_path / "out"
    with teacher_server(max_prompt_chars=len(whole) - 1) as (teacher, url):
        result = synth([docs], url, out, chunk_size=4000)
    assert [c["status"] for c in teacher.calls][0] == 400 and result.counts.chunks_failed == 0
    train, _ = rows(out)
    assert len(train) == 6 and all(r["source"]["quote"] in text for r in train)
    assert len({r["source"]["chunk_id"] for r in train}) == 1  # the pieces' rows keep the chunk they came from


def test_two_runs_into_one_folder_are_refused(tmp_path):
    from expertkit.synth.state import State

    docs = write_docs(tmp_path / "docs", {"pump.md": PUMP})
    held = State.open(tmp_path / "out")
    try:
        with pytest.raises(ExpertkitError, match="another `expertkit data synth` is writing to"):
            synth([docs], "http://127.0.0.1:9/v1", tmp_path / "out")
    finally:
        held.close()


def test_another_expertkit_serve_can_be_the_teacher(tmp_path):
    """The teacher behind expertkit's own OpenAI-compatible server (build_app), answering as the scripted one."""
    from live_server import ScriptedEngine, serve_engine
    from teacher_server import reply_for

    from expertkit.engine.base import Delta, Usage

    class Scripted(ScriptedEngine):
        def model_names(self):
            return ["teacher"]

        async def stream(self, messages, params, model=None, tools=None):
            yield Delta(text=reply_for(messages))
            yield Delta(finish_reason="stop", usage=Usage(100, 20))

    docs = write_docs(tmp_path / "docs", {"pump.md": PUMP, "zh.txt": ZH})
    with serve_engine(Scripted(), served_model_name="teacher", api_key=["sk-serve"]) as url:
        result = synth([docs], url + "/v1", tmp_path / "out", teacher_api_key="sk-serve", teacher_model="teacher")
    assert result.counts.train_rows == 6 and result.tally.prompt_tokens == 100 * result.tally.requests
