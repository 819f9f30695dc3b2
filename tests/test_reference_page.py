"""The committed reference page is exactly what the spec tables generate."""

from pathlib import Path

from ffaccel.transports.reference import render
from ffaccel.spec import GEMM_COMBOS, RULES

PAGE = Path(__file__).resolve().parents[1] / "docs" / "spec.md"


def test_committed_page_matches_generated() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/spec.md is stale: run `python -m ffaccel.transports.reference > docs/spec.md`")


def test_page_documents_every_rule_and_combination() -> None:
    text = render()
    for rule_id in RULES:
        assert f"`{rule_id}`" in text
    for combo in GEMM_COMBOS:
        assert f"| {combo.a.name.lower()}" in text.lower() or combo.name
    for phrase in ("beta == 0: C is not read", "alpha == 0 or k == 0: A and B are not read", "c = 2"):
        assert phrase in text
