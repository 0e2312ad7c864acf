"""conf/batchd.ini is the prose, `batchd --settings` the truth: tools/gen-man
fails, naming the key, when they drift, and the man pages it makes (and
batchd.8) render without a warning. Each failure is shown on a doctored
copy of the real file, so the check is known to be able to fail."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import BATCHD, ROOT, SAN_ENV

GEN_MAN = str(ROOT / "tools" / "gen-man")
INI = ROOT / "conf" / "batchd.ini"


def gen_man(*args):
    return subprocess.run(["/usr/bin/python3", GEN_MAN, *map(str, args)], capture_output=True, text=True,
                          env={**SAN_ENV, "PATH": "/usr/bin:/bin"}, timeout=60)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    r = subprocess.run([BATCHD, "--settings"], capture_output=True, text=True, env=SAN_ENV)
    assert r.returncode == 0, r.stderr
    path = tmp_path_factory.mktemp("settings") / "settings.jsonl"
    path.write_text(r.stdout)
    return path


def table(settings):
    return [json.loads(ln) for ln in settings.read_text().splitlines()]


def doctored(tmp_path, old, new, count=1):
    text = INI.read_text()
    assert text.count(old) >= count, f"conf/batchd.ini no longer has {old!r}: update the test"
    p = tmp_path / "batchd.ini"
    p.write_text(text.replace(old, new, count))
    return p


def test_settings_lines_are_the_table(settings):
    rows = table(settings)
    by = {(s["section"], s["name"]): s for s in rows}
    assert len(by) == len(rows), "a (section, key) printed twice"
    w = by[("batchd", "workers")]
    assert (w["type"], w["default"], w["min"], w["max"], w["reload"]) == ("int", "1", 0, 256, False)
    assert by[("postgres", "conninfo")]["required"] and by[("postgres", "conninfo")]["default"] is None
    assert by[("resource", "ttl")]["named"] and not by[("redis", "url")]["named"]


def test_real_file_matches_the_table(settings):
    r = gen_man("check", "--settings", settings, "--ini", INI)
    assert r.returncode == 0, r.stderr
    assert f"all {len(table(settings))} settings" in r.stdout


@pytest.mark.parametrize("old, new, needle", [
    # a key of the table missing from the file
    ("; Every connection sends PING this often.  (reload)\nping_interval_ms = 5000\n", "",
     r"\[redis\] ping_interval_ms: in batchd's table, missing from"),
    # a key the table lacks
    ("slow_ms = 100\n", "slow_ms = 100\nfast_ms = 5\n", r"\[batchd\] fast_ms: not a setting of \[batchd\]"),
    # in the wrong section: max_pending moved from [postgres] to [batchd]
    ("slow_ms = 100\n", "slow_ms = 100\nmax_pending = 1000\n",
     r"\[batchd\] max_pending: not a setting of \[batchd\].*has it in \[postgres\], \[redis\]"),
    # a default that differs
    ("max_pipeline = 32\n", "max_pipeline = 64\n",
     r"\[batchd\] max_pipeline: default is '32' in batchd's table, '64' here"),
    # a commented-out key's default too
    ("; leeway_s = 30\n", "; leeway_s = 60\n", r"\[auth\] leeway_s: default is '30'"),
    # reload marker: (reload) dropped from a reloadable key
    ("answer 403).  (reload)\n", "answer 403).\n",
     r"\[batchd\] admin_token: batchd's table says \(reload\)"),
    # reload marker on a restart-only key
    ("restarts a worker that dies and passes signals on.  (restart)\n",
     "restarts a worker that dies and passes signals on.  (reload)\n",
     r"\[batchd\] workers: batchd's table says \(restart\), its comment says \(reload\)"),
    # a section's marker removed: every key of [list NAME] is flagged
    ("All keys reload.  (reload)\n", "All keys reload.\n", r"\[list\] max_cached_pages: batchd's table says \(reload\)"),
    # a named section written without its name
    ("[resource sessions]\n", "[resource]\n", r"\[resource\] takes a name"),
])
def test_drift_is_caught_and_names_the_key(settings, tmp_path, old, new, needle):
    ini = doctored(tmp_path, old, new)
    r = gen_man("check", "--settings", settings, "--ini", ini)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(needle, r.stderr), r.stderr


def test_a_section_missing_from_the_file_is_caught(settings, tmp_path):
    """What a branch adding a section to the table but not to the file gets,
    with no edit to the check: a table that has a section the file lacks."""
    rows = table(settings) + [
        {"section": "telemetry", "named": False, "name": "sample_rate", "type": "list", "default": "",
         "min": None, "max": None, "required": False, "reload": True}]
    t = tmp_path / "settings.jsonl"
    t.write_text("".join(json.dumps(s) + "\n" for s in rows))
    r = gen_man("check", "--settings", t, "--ini", INI)
    assert r.returncode == 1 and "[telemetry] sample_rate: in batchd's table, but" in r.stderr, r.stderr
    # ... and passes once documented in the same style.
    ini = tmp_path / "batchd.ini"
    ini.write_text(INI.read_text() + "\n; [telemetry]\n; The share of requests traced.  (reload)\n"
                   "; sample_rate =\n")
    r = gen_man("check", "--settings", t, "--ini", ini)
    assert r.returncode == 0, r.stderr


def test_stale_page_is_caught(settings, tmp_path):
    page = tmp_path / "batchd.ini.5"
    r = gen_man("ini5", "--settings", settings, "--ini", INI, "--version", "9.9", "-o", page)
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert gen_man("check", "--settings", settings, "--ini", INI, "--man5", page).returncode == 0
    ini = doctored(tmp_path, "Every connection sends PING this often.", "Every connection pings this often.")
    shutil.copystat(INI, ini)  # same date: only the prose differs
    r = gen_man("check", "--settings", settings, "--ini", ini, "--man5", page)
    assert r.returncode == 1 and "stale" in r.stderr, r.stderr


def test_page_documents_every_key_with_its_facts(settings, tmp_path):
    page = tmp_path / "batchd.ini.5"
    assert gen_man("ini5", "--settings", settings, "--ini", INI, "--version", "9.9", "-o", page).returncode == 0
    text = page.read_text()
    for s in table(settings):
        assert f"\\fB{s['name'].replace('-', chr(92) + '-')}\\fR" in text, s["name"]
    for sect in ("[resource NAME]", "[stream NAME]", "[list NAME]", "[auth]", "[upstream]"):
        assert f'.SS "{sect}"' in text
    assert "Every connection sends PING this often." in text


def test_options_check_catches_an_undocumented_option(tmp_path):
    assert gen_man("check-options", "--main", ROOT / "daemon/main.c", "--man", ROOT / "man/batchd.8.in").returncode == 0
    main = tmp_path / "main.c"
    src = (ROOT / "daemon/main.c").read_text()
    main.write_text(src.replace('{ "test", no_argument, NULL, \'t\' },',
                                '{ "test", no_argument, NULL, \'t\' },\n        { "quiet", no_argument, NULL, \'q\' },')
                    .replace('"c:thv"', '"c:thvq"'))
    r = gen_man("check-options", "--main", main, "--man", ROOT / "man/batchd.8.in")
    assert r.returncode == 1 and "-q" in r.stderr and "--quiet" in r.stderr, r.stderr


def test_pages_render_without_warnings(settings, tmp_path):
    if not shutil.which("groff"):
        pytest.skip("groff not installed (apt-get install groff-base)")
    ini5, man8 = tmp_path / "batchd.ini.5", tmp_path / "batchd.8"
    assert gen_man("ini5", "--settings", settings, "--ini", INI, "--version", "9.9", "-o", ini5).returncode == 0
    assert gen_man("page8", "--in", ROOT / "man/batchd.8.in", "--version", "9.9", "-o", man8).returncode == 0
    r = gen_man("lint", ini5, man8)
    assert r.returncode == 0, r.stderr
    # The lint can fail: an unknown macro is a groff warning.
    bad = tmp_path / "bad.8"
    bad.write_text(man8.read_text().replace(".SH OPTIONS", ".SH OPTIONS\n.XYZZY"))
    assert gen_man("lint", bad).returncode == 1
    if shutil.which("man"):
        r = subprocess.run(["man", "--warnings", "-l", str(ini5)], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LC_ALL": "C.UTF-8"})
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
        assert "max_cached_pages" in r.stdout
