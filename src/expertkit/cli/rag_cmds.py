"""`expertkit kb ...` (the knowledge base) and `expertkit ask` (a grounded answer with numbered sources).

expertkit kb add docs/ notes.pdf https://example.org/faq kb_dir=kb
expertkit kb list --json
expertkit kb search "how do I reset the relay?"
expertkit ask "how do I reset the relay?" model_name_or_path=saves/merged web=true
"""

from __future__ import annotations

import json
import sys

import typer

from expertkit.core.errors import ExpertkitError

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}
KEYS_HELP = "Sources and key=value overrides (kb_dir=DIR ...; a .yaml file is read as the config); --json for JSON."

kb_app = typer.Typer(no_args_is_help=True, help="The knowledge base: add documents and pages, list, remove, search.")


def split_items(args: list[str]) -> tuple[list[str], list[str], bool]:
    """(positional items, config args for split_cli_args, --json given)."""
    items, keys, as_json = [], [], False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--json":
            as_json = True
        elif arg.startswith("--"):
            keys.append(arg)
            if "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("--"):
                keys.append(args[i + 1])
                i += 1
        elif ("=" in arg and arg.split("=", 1)[0].isidentifier()) or arg.endswith((".yaml", ".yml")):
            keys.append(arg)
        else:
            items.append(arg)
        i += 1
    return items, keys, as_json


def load(cls, keys: list[str]):
    from expertkit.core.config import load_config, split_cli_args

    path, overrides = split_cli_args(keys)
    return load_config(cls, path, overrides)


def open_kb(keys: list[str], create: bool = False):
    from expertkit.rag.config import KbCommandConfig
    from expertkit.rag.kb import KnowledgeBase

    config = load(KbCommandConfig, keys)
    return config, KnowledgeBase.open(config, create=create)


def emit_json(data) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))


@kb_app.command("add", context_settings=EXTRA_ARGS)
def kb_add(args: list[str] = typer.Argument(None, help=KEYS_HELP, show_default=False)) -> None:
    """Add files (md, txt, html, pdf, docx), folders (recursively) and http(s) pages; adding again updates.

    Example: expertkit kb add docs/ handbook.pdf https://example.org/faq kb_dir=kb
    """
    items, keys, as_json = split_items(args or [])
    if not items:
        raise ExpertkitError("nothing to add", hint="expertkit kb add docs/ notes.pdf https://example.org/faq")
    from expertkit.rag.extract import find_files

    find_files([i for i in items if not i.lower().startswith(("http://", "https://"))])  # bad paths: before creating
    config, kb = open_kb(keys, create=True)

    def show(r) -> None:
        if not as_json:
            what = f"{r.chunks} chunks" if r.status != "failed" else r.reason
            typer.echo(f"{r.status:<9} {r.source}  ({what})", err=r.status == "failed")

    with kb:
        results = kb.add(items, on_result=show, fetch=config)
        total = sum(s.get("chunks", 0) for s in kb.manifest.sources.values())
    counts = {s: sum(r.status == s for r in results) for s in ("added", "updated", "unchanged", "failed")}
    if as_json:
        emit_json({"results": [r.__dict__ for r in results], "kb_dir": config.kb_dir, "chunks": total, **counts})
    else:
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        typer.echo(f"{len(results)} source(s): {summary}; {total} chunks in {config.kb_dir}")
    if results and counts["failed"] == len(results):
        raise typer.Exit(1)


@kb_app.command("list", context_settings=EXTRA_ARGS)
def kb_list(args: list[str] = typer.Argument(None, help=KEYS_HELP, show_default=False)) -> None:
    """List the sources in the knowledge base with their chunk counts."""
    _, keys, as_json = split_items(args or [])
    config, kb = open_kb(keys)
    with kb:
        rows = kb.sources()
        if as_json:
            emit_json({"kb_dir": config.kb_dir, "embedder": kb.manifest.embedder, "sources": rows})
            return
        for r in rows:
            typer.echo(f"{r['chunks']:>6}  {r.get('kind', ''):<5} {r.get('added_at', '')[:19]}  {r['source']}")
        typer.echo(
            f"{len(rows)} source(s), {sum(r['chunks'] for r in rows)} chunks in {config.kb_dir} "
            f"({kb.manifest.backend}, {kb.manifest.embedder})"
        )


@kb_app.command("remove", context_settings=EXTRA_ARGS)
def kb_remove(args: list[str] = typer.Argument(None, help=KEYS_HELP, show_default=False)) -> None:
    """Remove sources (as `kb list` shows them, or the path / URL they came from) and their chunks."""
    items, keys, as_json = split_items(args or [])
    if not items:
        raise ExpertkitError("name the sources to remove", hint="see them with: expertkit kb list")
    _, kb = open_kb(keys)
    removed = []
    with kb:
        for item in items:
            source, n = kb.remove(item)
            removed.append({"source": source, "chunks": n})
            if not as_json:
                typer.echo(f"removed {source} ({n} chunks)")
    if as_json:
        emit_json({"removed": removed})


@kb_app.command("search", context_settings=EXTRA_ARGS)
def kb_search(args: list[str] = typer.Argument(None, help=KEYS_HELP, show_default=False)) -> None:
    """Show the chunks a question retrieves (hybrid BM25 + vectors by default), best first.

    Example: expertkit kb search "how do I reset the relay?" top_k=3
    """
    items, keys, as_json = split_items(args or [])
    if not items:
        raise ExpertkitError("no query given", hint='expertkit kb search "your question"')
    config, kb = open_kb(keys)
    with kb:
        hits = kb.search(" ".join(items))
    if as_json:
        emit_json({"query": " ".join(items), "retrieval": config.retrieval, "results": [h.to_json() for h in hits]})
        return
    if not hits:
        typer.echo("no results")
    for rank, h in enumerate(hits, 1):
        text = " ".join(h.text.split())
        typer.echo(f"{rank}. [{h.score:.4f}] {h.title} — {h.source}\n   {text[:300]}")


def ask(args: list[str] = typer.Argument(None, help=KEYS_HELP, show_default=False)) -> None:
    """Answer a question from the knowledge base (and the web with web=true), citing numbered sources.

    Example: expertkit ask "when was Zephyr-9 retired?" model_name_or_path=saves/merged kb_dir=kb web=true
    """
    import asyncio

    items, keys, as_json = split_items(args or [])
    if not items:
        raise ExpertkitError("no question given", hint='expertkit ask "your question" model_name_or_path=...')
    from expertkit.rag.config import AskConfig

    config = load(AskConfig, keys)
    result = asyncio.run(run_ask(" ".join(items), config, stream=not as_json))
    if as_json:
        emit_json(result)


async def run_ask(question: str, config, stream: bool = True, out=None) -> dict:
    """Retrieve (after a web search with web=true), then stream the grounded answer and list its sources."""
    from pathlib import Path

    from expertkit.engine.base import SamplingParams
    from expertkit.engine.factory import load_engine
    from expertkit.rag.answer import cited, grounded_messages
    from expertkit.rag.kb import MANIFEST, KnowledgeBase
    from expertkit.rag.webread import search_web

    out = out or sys.stdout
    exists = (Path(config.kb_dir) / MANIFEST).is_file()
    if not exists and not config.web:
        raise ExpertkitError(
            f"no knowledge base at kb_dir={config.kb_dir} and web search is off",
            hint="add documents first (expertkit kb add DOCS...) or search the web with web=true",
        )
    notes: list[str] = []
    with KnowledgeBase.open(config, create=True) as kb:
        if config.web:
            report = await search_web(question, config, kb)
            if report.error:
                notes.append(f"web search failed: {report.error}")
            notes += [f"skipped {url}: {reason}" for url, reason in report.failures]
        hits = kb.search(question)
    for note in notes:
        typer.echo(note, err=True)
    messages, sources = grounded_messages(question, hits)
    engine = load_engine(config)
    answer, reasoning = "", ""
    try:
        async for delta in engine.stream(messages, SamplingParams(temperature=0.0, max_tokens=config.max_new_tokens)):
            answer += delta.text
            reasoning += delta.reasoning
            if stream and delta.text:
                out.write(delta.text)
                out.flush()
    finally:
        await engine.close()
    used = cited(answer, sources)
    if stream:
        out.write("\n")
        if sources:
            out.write("\nSources:\n")
            for s in sources:
                mark = "" if s.n in used or not used else "  (not cited)"
                out.write(f"[{s.n}] {s.title} — {s.url}{mark}\n")
        else:
            out.write("\n(no sources found)\n")
    return {
        "answer": answer,
        "reasoning": reasoning or None,
        "sources": [s.to_json() for s in sources],
        "cited": used,
        "notes": notes,
    }
