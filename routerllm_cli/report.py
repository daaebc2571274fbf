"""The comparison report: systems side by side as JSON, a markdown table, and a cost-quality chart.

Input is one dict per system (the router, the large model, optionally each pool model alone):
    name, accuracy (0..1), accuracy_kind ("pass@1" | "generation success"), latency_mean_s, latency_p95_s,
    wall_s, kwh, co2_g, cost_usd, routing ({model: problems}), and optionally load_s, notes (lines for the
    report) and kind ("router" | "large" | "pool model") for the chart's markers.
Numbers may be None where they were not measured; they print as "-" and are left off the chart.
`write_comparison` writes comparison.json, comparison.md and cost_quality.png and returns table rows; the
CLI renders those rows (`rich_table` builds a rich Table, importing rich only when called).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routerllm_cli.errors import RouterLLMError
from routerllm_cli.units import format_duration

REQUIRED_KEYS = ("name", "accuracy", "accuracy_kind", "latency_mean_s", "latency_p95_s", "wall_s", "kwh",
                 "co2_g", "cost_usd")
ACCURACY_KINDS = ("pass@1", "generation success")
COLUMNS = ["system", "accuracy", "measured as", "latency mean", "latency p95", "wall", "load", "energy", "CO2",
           "cost", "routing"]
BASIS_NOTE = ("Wall, energy, CO2 and cost cover generation (and the cascade's docstring checks); load is the "
              "time its models took to load, counted once per model.")

MIXED_KINDS_NOTE = ("Accuracy is measured two ways here: pass@1 runs the hidden tests; generation success only "
                    "says an answer was produced. Do not rank one against the other.")


@dataclass(frozen=True)
class ComparisonReport:
    rows: list[list[str]]
    json_path: Path
    md_path: Path
    png_path: Path
    notes: list[str]


def check_systems(systems: Sequence[Mapping[str, Any]]) -> None:
    if not systems:
        raise RouterLLMError("nothing to compare: no system results", fix="run at least one system")
    for s in systems:
        missing = [k for k in REQUIRED_KEYS if k not in s]
        if missing:
            raise RouterLLMError(f"system {s.get('name', '?')!r} lacks {', '.join(missing)}",
                                 fix="give every system result all of: " + ", ".join(REQUIRED_KEYS))
        if s["accuracy_kind"] not in ACCURACY_KINDS:
            raise RouterLLMError(f"system {s['name']!r}: accuracy_kind {s['accuracy_kind']!r}",
                                 fix='use "pass@1" or "generation success"')
    names = [s["name"] for s in systems]
    if len(set(names)) != len(names):
        raise RouterLLMError("two systems share a name", fix="name each system uniquely")


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _fmt(value: Any, spec: str, suffix: str = "", prefix: str = "") -> str:
    v = _num(value)
    return "-" if v is None else f"{prefix}{v:{spec}}{suffix}"


def format_cost(usd: Any) -> str:
    """Dollars to the cent, and sub-dollar costs (small models, short runs) to a hundredth of a cent so systems
    that differ are not all "$0.01"."""
    v = _num(usd)
    if v is None:
        return "-"
    if v >= 1 or v == 0:
        return f"${v:.2f}"
    return f"${v:.4f}" if v >= 0.0001 else "<$0.0001"


def format_routing(routing: Mapping[str, int] | None) -> str:
    if not routing:
        return "-"
    total = sum(routing.values()) or 1
    return ", ".join(f"{m}: {n} ({100 * n / total:.0f}%)" for m, n in routing.items())


def comparison_rows(systems: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """One row of display strings per system, in COLUMNS order."""
    check_systems(systems)
    rows = []
    for s in systems:
        kwh = _num(s["kwh"])
        rows.append([
            str(s["name"]),
            _fmt(None if s["accuracy"] is None else 100 * float(s["accuracy"]), ".1f", "%"),
            s["accuracy_kind"],
            format_duration(s["latency_mean_s"]),
            format_duration(s["latency_p95_s"]),
            format_duration(s["wall_s"]),
            format_duration(s.get("load_s")),
            "-" if kwh is None else f"{kwh:.4g} kWh",
            _fmt(s["co2_g"], ".1f", " g"),
            format_cost(s["cost_usd"]),
            format_routing(s.get("routing")),
        ])
    return rows


def report_notes(systems: Sequence[Mapping[str, Any]]) -> list[str]:
    notes = [BASIS_NOTE] if any(s.get("load_s") is not None for s in systems) else []
    if len({s["accuracy_kind"] for s in systems}) > 1:
        notes.append(MIXED_KINDS_NOTE)
    for s in systems:
        for note in s.get("notes", []) or []:
            notes.append(f"{s['name']}: {note}")
    return notes


def markdown_table(rows: Sequence[Sequence[str]], columns: Sequence[str] = COLUMNS) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_cost_quality(systems: Sequence[Mapping[str, Any]], path: Path, title: str | None = None) -> Path:
    """Two panels, accuracy vs cost and accuracy vs mean latency, one labelled point per system."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    markers = {"router": "o", "large": "s", "pool model": "^"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    panels = [(axes[0], "cost_usd", "cost (USD)"), (axes[1], "latency_mean_s", "mean latency per problem (s)")]
    for ax, key, xlabel in panels:
        xs = []
        for s in systems:
            x, y = _num(s[key]), _num(s["accuracy"])
            if x is None or y is None:
                continue
            xs.append(x)
            ax.scatter([x], [100 * y], marker=markers.get(s.get("kind", ""), "o"), s=60, zorder=3)
            ax.annotate(str(s["name"]), (x, 100 * y), textcoords="offset points", xytext=(6, 6), fontsize=9)
        positive = [x for x in xs if x > 0]
        # Costs span orders of magnitude (a 1B model vs a 405B one); a log axis keeps both readable.
        if positive and len(positive) == len(xs) and max(positive) / min(positive) > 50:
            ax.set_xscale("log")
        if not xs:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.margins(x=0.25)  # room for the labels of the outermost points
        ax.set_ylim(-3, 103)  # the whole 0-100% scale, so small gaps do not look large
        ax.set_xlabel(xlabel)
        kinds = sorted({s["accuracy_kind"] for s in systems})
        ax.set_ylabel(f"accuracy, % ({' / '.join(kinds)})")
        ax.grid(True, alpha=0.3)
    kinds_present = [k for k in markers if any(s.get("kind") == k for s in systems)]
    if kinds_present:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker=markers[k], linestyle="", color="grey", label=k) for k in kinds_present]
        axes[0].legend(handles=handles, loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_comparison(systems: Sequence[Mapping[str, Any]], out_dir: str | Path, *,
                     title: str = "HumanEval: router vs large model", extra: Mapping[str, Any] | None = None
                     ) -> ComparisonReport:
    """Write comparison.json, comparison.md and cost_quality.png into `out_dir`; return the table rows."""
    rows = comparison_rows(systems)
    notes = report_notes(systems)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = out / "comparison.json", out / "comparison.md", out / "cost_quality.png"

    payload = {"title": title, "systems": [dict(s) for s in systems], "notes": notes, **(extra or {})}
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(json_path)

    md = [f"# {title}", "", markdown_table(rows), ""]
    md += [f"- {n}" for n in notes]
    md += ["", f"![accuracy vs cost and latency]({png_path.name})", ""]
    md_path.write_text("\n".join(md))

    plot_cost_quality(systems, png_path, title)
    return ComparisonReport(rows=rows, json_path=json_path, md_path=md_path, png_path=png_path, notes=notes)


# Below this many columns the side-by-side table cannot show its eleven columns without cutting every cell.
WIDE_TABLE_MIN_WIDTH = 150


def rich_table(rows: Sequence[Sequence[str]], columns: Sequence[str] = COLUMNS, title: str | None = None,
               width: int | None = None) -> Any:
    """A rich Table of `comparison_rows` output, for the CLI to print: one row per system on a wide terminal;
    on a narrower one (`width` below WIDE_TABLE_MIN_WIDTH, e.g. an 80-column tmux pane) one column per system
    and one row per metric, so no number is cut."""
    from rich.table import Table

    table = Table(title=title)
    if width is not None and width < WIDE_TABLE_MIN_WIDTH and rows:
        table.add_column(columns[0], style="bold", no_wrap=True)
        for row in rows:
            table.add_column(row[0], justify="right", overflow="fold")
        for i, metric in enumerate(columns[1:], start=1):
            table.add_row(metric, *(row[i] for row in rows))
        return table
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i in (0, 2, len(columns) - 1) else "right")
    for row in rows:
        table.add_row(*row)
    return table
