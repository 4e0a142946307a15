"""What `expertkit data check` shows before training that `expertkit data clean` would remove or mask:

    near duplicates: 2 (data/train.jsonl:3 ~ data/train.jsonl:1, data/train.jsonl:5 ~ data/train.jsonl:4)
    PII: 2 row(s) (EMAIL 1, PHONE 1, ID_CARD 1) (data/train.jsonl:6: EMAIL PHONE, data/train.jsonl:7: ID_CARD)
      fix: expertkit data clean data/train.jsonl output=data/clean.jsonl

The detectors are data clean's own (`data/dedup.py` at its default threshold, `data/pii.py`), run over the valid
rows' texts; exact duplicates are reported by data check itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from expertkit.core.errors import ExpertkitError
from expertkit.core.schema import Conversation, PreferencePair, UnpairedExample
from expertkit.data.load import item_texts
from expertkit.data.pii import find_pii

SHOWN = 5


@dataclass
class Findings:
    near_duplicates: list[tuple[str, str]] = field(default_factory=list)  # (source, the earlier row it is close to)
    pii: list[tuple[str, list[str]]] = field(default_factory=list)  # (source, kinds found)
    pii_counts: dict[str, int] = field(default_factory=dict)  # kind -> occurrences
    not_checked: str = ""  # why near-duplicates were not looked for (datasketch missing)

    def format(self) -> list[str]:
        lines = []
        if self.not_checked:
            lines.append(f"near duplicates: not checked ({self.not_checked})")
        else:
            shown = ", ".join(f"{a} ~ {b}" for a, b in self.near_duplicates[:SHOWN])
            more = ", ..." if len(self.near_duplicates) > SHOWN else ""
            lines.append(f"near duplicates: {len(self.near_duplicates)} ({shown}{more})" if shown else
                         "near duplicates: none")  # fmt: skip
        if self.pii:
            kinds = ", ".join(f"{k} {n}" for k, n in self.pii_counts.items())
            shown = ", ".join(f"{where}: {' '.join(k)}" for where, k in self.pii[:SHOWN])
            lines.append(f"PII: {len(self.pii)} row(s) ({kinds}) ({shown}{', ...' if len(self.pii) > SHOWN else ''})")
        else:
            lines.append("PII: none found")
        if self.pii or self.near_duplicates:
            lines.append("  fix: expertkit data clean FILE output=CLEAN.jsonl (see docs/data.md, Cleaning)")
        return lines


def find_findings(items: list[Conversation] | list[PreferencePair] | list[UnpairedExample]) -> Findings:
    """Near-duplicates (not exact ones) and PII among `items`, each located by its source (`file:line`)."""
    from expertkit.data.dedup import DuplicateIndex

    findings = Findings()
    try:
        index = DuplicateIndex()
    except ExpertkitError as e:
        index, findings.not_checked = None, e.message
    for number, item in enumerate(items):
        text = "\n".join(item_texts(item))
        found = find_pii(text)
        if found:
            findings.pii.append((item.source, sorted({k for k, _ in found})))
            for kind, _ in found:
                findings.pii_counts[kind] = findings.pii_counts.get(kind, 0) + 1
        duplicate = index.first_copy(number, text) if index else None
        if duplicate and duplicate[0] == "near duplicate":
            findings.near_duplicates.append((item.source, items[duplicate[1]].source))
    return findings
