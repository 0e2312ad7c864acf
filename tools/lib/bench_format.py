"""tools/lib/bench_format.py: number formats for the bench report, and the
README's benchmark section.

A full `tools/bench` run writes bench/results/latest.{md,json} and then
rewrites the part of README.md between the two bench markers from
latest.json, so the README always shows the latest full run. To redo the
README from the stored run without measuring again:

    /usr/bin/python3 tools/lib/bench_format.py bench/results/latest.json README.md
"""
import json
import sys
from pathlib import Path

BEGIN = "<!-- bench:begin: written by tools/bench from bench/results/latest.json -->"
END = "<!-- bench:end -->"


def fmt_num(v, digits=0):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def fmt_ms(v):
    if v is None:
        return "—"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def fmt_ratio(v):
    return "—" if v is None else fmt_ms(v) + "×"


def fmt_rt(v):
    if v is None:
        return "—"
    return "0" if v == 0 else f"{v:.3f}" if v < 0.1 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def sse_value(res, *names):
    """sse-load's summary, read leniently: the first of names present in the
    flattened JSON (nested keys joined with "_")."""
    flat = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, prefix + k + "_")
            else:
                flat[(prefix + k).lower()] = v
    walk(res)
    for n in names:
        if n in flat:
            return flat[n]
    return None


def row_ratio(b, r):
    """batchd's row b over row r: in req/s, or in ids/s when a row's request
    carries a different number of ids (pgbench by-id)."""
    if r["ids"] != b["ids"]:
        return b["rps"] * b["ids"] / (r["rps"] * r["ids"])
    return b["rps"] / r["rps"]


def readme_section(doc):
    """The README's benchmark section, from a full run's latest.json."""
    m = doc.get("machine", {})
    L = [BEGIN, "",
         f"Latest full run: `tools/bench` on {doc['when']}, {m.get('cpu', '?')} with {m.get('cores', '?')} cores, "
         f"Linux {m.get('kernel', '?')}, load generators pinned to CPU 0 and each server with its Redis and "
         f"PostgreSQL to CPU 1 (so batchd's figures are per server core, Redis and PostgreSQL included). "
         f"Every row, the method and the versions of every peer are in "
         f"[bench/results/latest.md](bench/results/latest.md).", ""]
    goals = doc.get("goals") or []
    if goals:
        L += ["| goal | measured | target | met |", "|---|---:|---:|:---:|"]
        for g in goals:
            t, up = g["target"], g.get("upper")
            met = ("—" if g["ratio"] is None or t is None else
                   "yes" if (g["ratio"] <= t if up else g["ratio"] >= t) else "**no**")
            target = "—" if t is None else f"{'≤' if up else '≥'} {t:g}×"
            L.append(f"| {g['text']} | {fmt_ratio(g['ratio'])} | {target} | {met} |")
        L.append("")
    L += ["| scenario | system | req/s | p50 ms | p99 ms | batchd ÷ row | Redis cmds/req | PG queries/req |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
    refs = {}
    for r in doc["rows"]:
        if r["kind"] == "batchd" and not r["na"]:
            refs.setdefault(r["scenario"], r)
    named = {(r["scenario"], r["system"]): r for r in doc["rows"] if not r["na"]}
    for r in doc["rows"]:
        if r["na"]:
            L.append(f"| {r['scenario']} | {r['system']} | n/a | | | | | |")
            continue
        # A row may name the batchd row it compares with (a list walk with a walk).
        b = named.get((r["scenario"], r["vs"])) if r.get("vs") else refs.get(r["scenario"])
        ratio = "—" if b is None or b is r else fmt_ratio(row_ratio(b, r))
        name = r["system"] + (f", {r['conns']} conns" if r["conns"] not in (64, 16) and "connections" not in r["system"]
                              else "")
        L.append(f"| {r['scenario']} | {name} | {fmt_num(r['rps'])} | {fmt_ms(r['p50'])} | {fmt_ms(r['p99'])} | "
                 f"{ratio} | {fmt_rt(r['redis'])} | {fmt_rt(r['pg'])} |")
    sse = [s for s in doc.get("sse", []) if s.get("result")]
    if sse:
        L += ["", "| SSE | test | clients | deliveries/s | missing | p50 ms | p99 ms | server RSS/client |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
        for s in sse:
            g = lambda *n: sse_value(s["result"], *n)
            rss = g("rss_per_client") if s["test"] == "fan-out" else None
            missing = g("missing") if g("deliveries_expected") else "unverified"
            L.append(f"| {s['system']} | {s['test']} | {fmt_num(g('connected'))} | "
                     f"{fmt_num(g('deliveries_per_s'))} | {missing if isinstance(missing, str) else fmt_num(missing)} | "
                     f"{fmt_ms(g('latency_ms_p50'))} | {fmt_ms(g('latency_ms_p99'))} | "
                     f"{'—' if rss is None else f'{rss / 1024:.1f} KiB'} |")
    if doc.get("repro"):
        L += ["", doc["repro"]]
    L += ["", END]
    return "\n".join(L)


def update_readme(readme, doc):
    """Replaces the README's section between the markers; False when the
    README has no markers (then it is left alone)."""
    readme = Path(readme)
    text = readme.read_text()
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        return False
    readme.write_text(text[:i] + readme_section(doc) + text[j + len(END):])
    return True


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: bench_format.py LATEST.json README.md")
    if not update_readme(sys.argv[2], json.loads(Path(sys.argv[1]).read_text())):
        sys.exit(f"{sys.argv[2]}: no {BEGIN!r} ... {END!r} markers")
