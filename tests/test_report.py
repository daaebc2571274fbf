"""The comparison report: JSON and markdown hold the numbers given, the chart is a real PNG."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from routerllm_cli.errors import RouterLLMError
from routerllm_cli.report import MIXED_KINDS_NOTE, comparison_rows, rich_table, write_comparison

SYSTEMS = [
    {"name": "router (cascade)", "kind": "router", "accuracy": 0.61, "accuracy_kind": "pass@1",
     "latency_mean_s": 2.345, "latency_p95_s": 7.9, "wall_s": 385.0, "kwh": 0.01234, "co2_g": 5.86,
     "cost_usd": 1.23, "routing": {"smollm2_135m": 120, "qwen-7b": 44}},
    {"name": "llama-3.1-405b", "kind": "large", "accuracy": 0.87, "accuracy_kind": "pass@1",
     "latency_mean_s": 41.0, "latency_p95_s": 95.5, "wall_s": 6724.0, "kwh": 1.5, "co2_g": 712.5,
     "cost_usd": 22.41, "routing": None},
    {"name": "smollm2_135m", "kind": "pool model", "accuracy": 0.12, "accuracy_kind": "pass@1",
     "latency_mean_s": 0.8, "latency_p95_s": 1.6, "wall_s": 131.2, "kwh": 0.001, "co2_g": 0.475,
     "cost_usd": 0.15, "routing": None},
]


def test_files_hold_the_numbers(tmp_path):
    report = write_comparison(SYSTEMS, tmp_path / "cmp")
    assert report.json_path == tmp_path / "cmp" / "comparison.json"
    data = json.loads(report.json_path.read_text())
    assert [s["name"] for s in data["systems"]] == [s["name"] for s in SYSTEMS]
    assert data["systems"][1]["cost_usd"] == 22.41 and data["systems"][0]["kwh"] == 0.01234
    assert data["systems"][0]["routing"] == {"smollm2_135m": 120, "qwen-7b": 44}

    md = report.md_path.read_text()
    router_line = next(line for line in md.splitlines() if line.startswith("| router (cascade)"))
    for text in ("61.0%", "pass@1", "2.35 s", "7.90 s", "6m 25s", "0.01234 kWh", "5.9 g", "$1.23",
                 "smollm2_135m: 120 (73%), qwen-7b: 44 (27%)"):
        assert text in router_line, text
    assert "1h 52m" in md  # the large model's wall time
    assert "cost_quality.png" in md
    assert report.rows[1][:2] == ["llama-3.1-405b", "87.0%"]


def test_chart_is_a_real_image(tmp_path):
    png = write_comparison(SYSTEMS, tmp_path).png_path
    raw = png.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(raw) > 20_000
    with Image.open(png) as img:
        img.load()
        assert img.size == (1320, 540)  # 11 x 4.5 inches at 120 dpi: two panels side by side
        colours = img.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 50  # points, labels, axes, not a blank canvas


def test_unmeasured_numbers_print_as_dash_and_mixed_kinds_are_flagged(tmp_path):
    systems = [dict(SYSTEMS[0]), {**SYSTEMS[1], "accuracy_kind": "generation success", "kwh": None,
                                  "co2_g": None, "cost_usd": None}]
    report = write_comparison(systems, tmp_path)
    assert report.rows[1][6:9] == ["-", "-", "-"]
    assert MIXED_KINDS_NOTE in report.md_path.read_text()
    assert json.loads(report.json_path.read_text())["notes"] == [MIXED_KINDS_NOTE]
    assert report.png_path.stat().st_size > 10_000


def test_incomplete_results_name_what_is_missing():
    broken = {k: v for k, v in SYSTEMS[0].items() if k != "latency_p95_s"}
    with pytest.raises(RouterLLMError, match="lacks latency_p95_s"):
        comparison_rows([broken])
    with pytest.raises(RouterLLMError, match="accuracy_kind"):
        comparison_rows([{**SYSTEMS[0], "accuracy_kind": "pass@10"}])
    with pytest.raises(RouterLLMError, match="nothing to compare"):
        comparison_rows([])


def test_rich_table_renders_every_system():
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(rich_table(comparison_rows(SYSTEMS), title="compare"))
    text = console.export_text()
    for s in SYSTEMS:
        assert s["name"] in text
    assert "$22.41" in text


def test_rich_table_in_an_80_column_pane_cuts_no_cell():
    from rich.console import Console

    rows = comparison_rows(SYSTEMS)
    console = Console(record=True, width=80)
    console.print(rich_table(rows, title="compare", width=console.width))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for row in rows:  # every value but the wrapped routing text stands whole on one line
        for cell in row[1:-1]:
            assert cell in text, cell
    wide = Console(record=True, width=80)
    wide.print(rich_table(rows, title="compare"))  # the side-by-side layout is what cut the cells
    assert "…" in wide.export_text()


def test_small_costs_keep_their_differences():
    from routerllm_cli.report import format_cost

    assert [format_cost(v) for v in (22.41, 1.0, 0.0276, 0.0145, 0.00004, 0.0, None)] == [
        "$22.41", "$1.00", "$0.0276", "$0.0145", "<$0.0001", "$0.00", "-"]
