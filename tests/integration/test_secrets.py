"""Secrets in the configuration never reach stderr or the log.

A URL's password, a conninfo's password= and admin_token are masked in every
value batchd prints: `batchd -t` errors, a rejected SIGHUP reload, the
restart-needed list. The shapes of values are covered one by one in
tests/unit/test_config_mask.c; this checks what an operator would see."""

import re
import signal
import subprocess

from harness import BATCHD, ROOT, SAN_ENV, wait_until

SECRET = "S3cretPw"


def check(tmp_path, text):
    p = tmp_path / "t.ini"
    p.write_text(text)
    r = subprocess.run([BATCHD, "-t", "-c", str(p)], capture_output=True, text=True,
                       env={**SAN_ENV, "PATH": "/usr/bin:/bin"})
    return r.returncode, r.stdout + r.stderr, str(p)


def test_redis_url_password_is_masked_in_check_errors(tmp_path):
    rc, out, path = check(tmp_path, f"[batchd]\n[redis]\nurl = redis://user:{SECRET}@127.0.0.1:notaport/0\n")
    assert rc == 2, out
    assert f"{path}:3: [redis] url = redis://user:***@127.0.0.1:notaport/0: port must be" in out, out
    assert SECRET not in out


def test_upstream_url_with_credentials_is_refused_and_masked(tmp_path):
    rc, out, path = check(tmp_path, f"[batchd]\n[upstream]\nurl = http://app:{SECRET}@127.0.0.1:8000\n")
    assert rc == 2, out
    assert f"{path}:3: [upstream] url = http://app:***@127.0.0.1:8000: must not hold user:password@" in out, out
    assert SECRET not in out


def test_conninfo_password_with_a_bad_setting_beside_it(tmp_path):
    rc, out, path = check(tmp_path, "[batchd]\n[postgres]\n"
                          f"conninfo = host=127.0.0.1 dbname=app user=app password={SECRET}\n"
                          "pool_size = 0\n")
    assert rc == 2, out
    assert f"{path}:4: [postgres] pool_size = 0: must be between 1 and 256" in out, out
    assert SECRET not in out


def test_bad_conninfo_is_an_error_with_its_password_masked(tmp_path):
    """A conninfo libpq cannot parse fails the check (it used to fail only
    at connect time); the value is shown with the password hidden, quoted
    or not, and libpq's reason does not repeat it either."""
    for conninfo, shown in [
        (f"host=127.0.0.1 password={SECRET} bogus=1", "host=127.0.0.1 password=*** bogus=1"),
        (f"host=127.0.0.1 password='{SECRET} x' bogus=1", "host=127.0.0.1 password=*** bogus=1"),
        (f"postgresql://app:{SECRET}@127.0.0.1/app?bogus=1", "postgresql://app:***@127.0.0.1/app?bogus=1"),
        (f"host=127.0.0.1 {SECRET}", None),
    ]:
        rc, out, path = check(tmp_path, f"[batchd]\n[postgres]\nconninfo = {conninfo}\n")
        assert rc == 2, out
        assert f"{path}:3: [postgres] conninfo = " in out, out
        if shown:
            assert f"conninfo = {shown}: " in out, out
        assert SECRET not in out, out


def test_valid_conninfo_forms_pass_the_check(tmp_path):
    for conninfo in ["app", "host=127.0.0.1 dbname=app password='a b'", "postgresql://app:pw@127.0.0.1:5432/app"]:
        rc, out, _ = check(tmp_path, f"[batchd]\n[postgres]\nconninfo = {conninfo}\n")
        assert rc == 0, (conninfo, out)


def test_admin_token_is_never_printed(tmp_path):
    rc, out, _ = check(tmp_path, f"[batchd]\nadmin_token = {SECRET}\nadmin_token = {SECRET}\nmax_pipeline = 0\n")
    assert rc == 2 and "duplicate key" in out and SECRET not in out, out


def test_rejected_reload_does_not_log_the_secret(start_batchd, pg):
    b = start_batchd(batchd=f"admin_token = tok-{SECRET}\n",
                     extra=f"[postgres]\nconninfo = {pg.conninfo()} password={SECRET}\npool_size = 1\n")
    wait_until(lambda: b.metric("batchd_pg_up") == 1, what="postgres up")
    good = b.conf.read_text()
    b.conf.write_text(good + f"[redis]\nurl = redis://user:{SECRET}@127.0.0.1:notaport/0\n")
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload rejected" in b.log(), what="reload rejected")
    assert "redis://user:***@127.0.0.1:notaport/0" in b.log()

    b.conf.write_text(good.replace(f"password={SECRET}", f"password='{SECRET}' bogus=1"))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: b.log().count("reload rejected, the running") == 2, what="second reload rejected")
    assert "invalid connection option" in b.log()
    assert SECRET not in b.log()


def test_restart_needed_conninfo_change_does_not_log_the_secret(start_batchd, pg):
    b = start_batchd(extra=f"[postgres]\nconninfo = {pg.conninfo()} password={SECRET}\npool_size = 1\n")
    wait_until(lambda: b.metric("batchd_pg_up") == 1, what="postgres up")
    b.conf.write_text(b.conf.read_text().replace(f"password={SECRET}", "password=N3wS3cretPw"))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: 'msg="reloaded"' in b.log(), what="reload")
    log = b.log()
    assert re.search(r'level=warn msg="setting changed but needs restart" setting="\[postgres\] conninfo"', log), log
    assert SECRET not in log and "N3wS3cretPw" not in log


# --- the example admin_token --------------------------------------------------------


def example_admin_token():
    m = re.search(r"(?m)^admin_token\s*=\s*(\S+)\s*$", (ROOT / "conf" / "batchd.ini").read_text())
    assert m, "conf/batchd.ini sets no admin_token"
    return m.group(1)


def test_example_admin_token_warns_at_start(start_batchd):
    token = example_admin_token()
    b = start_batchd(batchd=f"admin_token = {token}\n")
    wait_until(lambda: "admin_token is the example value" in b.log(), what="warning")
    line = next(ln for ln in b.log().splitlines() if "admin_token is the example value" in ln)
    assert "level=warn" in line and token not in line


def test_own_admin_token_does_not_warn(start_batchd):
    b = start_batchd(batchd="admin_token = a-real-one\n")
    wait_until(lambda: 'msg="started"' in b.log(), what="started")
    assert "example value" not in b.log()
