"""README.zh-CN.md keeps step with README.md.

Each section of the Chinese README names the English section it translates
(`<!-- en: HEADING -->` under its heading).  Within each pair, the command lines of the fenced
code blocks must be the same, in the same order (continuation lines joined, comments dropped:
those are translated), and the inline code of table rows the same (as a multiset: word order
changes in translation).  Every exit code README.md documents is in the Chinese table.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EN = (ROOT / "README.md").read_text(encoding="utf-8")
ZH = (ROOT / "README.zh-CN.md").read_text(encoding="utf-8")
# The English sections a Chinese reader needs most: each must have its translation.
REQUIRED = (
    "Quick start on a GPU cloud",
    "Mainland China: mirrors",
    "Exit codes",
    "Troubleshooting",
)
_HEADING = re.compile(r"^(#{2,6}) (.+)$", re.MULTILINE)
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def sections(text: str) -> dict[str, str]:
    """{heading: body up to the next heading of the same or a higher level}."""
    found = list(_HEADING.finditer(text))
    out = {}
    for i, match in enumerate(found):
        level = len(match.group(1))
        end = next((m.start() for m in found[i + 1 :] if len(m.group(1)) <= level), len(text))
        out[match.group(2).strip()] = text[match.end() : end]
    return out


def commands(body: str) -> list[str]:
    """The command lines of a section's fenced code blocks."""
    lines = []
    for block in _FENCE.findall(body):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()  # a trailing comment is prose
            if line and not line.startswith("#"):
                lines.append(" ".join(line.split()))
    return lines


def table_code(body: str) -> Counter[str]:
    """Inline code spans of the section's table rows."""
    rows = [line for line in _FENCE.sub("", body).splitlines() if line.startswith("|")]
    return Counter(span for row in rows for span in re.findall(r"`([^`]+)`", row))


def pairs() -> dict[str, tuple[str, str]]:
    """{English heading: (English body, Chinese body)} for every anchored Chinese section."""
    english = sections(EN)
    out = {}
    for body in sections(ZH).values():
        anchor = re.match(r"\s*<!-- en: (.+?) -->", body)
        if anchor:
            name = anchor.group(1)
            assert name in english, (
                f"README.zh-CN.md translates {name!r}, which README.md does not have"
            )
            out[name] = (english[name], body)
    return out


def exit_codes(body: str) -> set[int]:
    return {int(code) for code in re.findall(r"^\| (\d+) \|", body, re.MULTILINE)}


def test_every_required_section_is_translated() -> None:
    assert set(REQUIRED) <= set(pairs())


@pytest.mark.parametrize("name", REQUIRED)
def test_commands_are_the_same_in_both_languages(name: str) -> None:
    en, zh = pairs()[name]
    assert commands(zh) == commands(en)
    assert table_code(zh) == table_code(en)


def test_the_chinese_exit_code_table_has_every_documented_code() -> None:
    en, zh = pairs()["Exit codes"]
    assert exit_codes(en) and exit_codes(en) <= exit_codes(zh)


def test_the_checks_notice_a_command_that_differs() -> None:
    en, zh = pairs()["Quick start on a GPU cloud"]
    assert commands(zh.replace("grpo-bootstrap:cu128", "grpo-bootstrap:cu12")) != commands(en)
    assert commands(zh.replace("# 构建（海外）", "# 构建（海外）  # 注释")) == commands(en)
    troubleshooting_en, troubleshooting_zh = pairs()["Troubleshooting"]
    changed = troubleshooting_zh.replace("`--profile gpu-16gb`", "`--profile gpu-24gb`")
    assert table_code(changed) != table_code(troubleshooting_en)
    en_codes, zh_codes = pairs()["Exit codes"]
    assert not exit_codes(en_codes) <= exit_codes(zh_codes.replace("| 4 |", "| 40 |"))
