"""A fresh `meson install` gives a service that starts.

The live config holds secrets, so tools/install-config.sh makes it
root:batchd 0640 and the unit runs as the system user batchd, declared in
lib/sysusers.d/batchd.conf. These tests install into a DESTDIR (never the
real root), then play the target machine: create the user and group from the
installed sysusers.d file in a throwaway root, give the config that group as
the install script does on a real install, and run the installed
`batchd -t` as an unprivileged user in that group, as ExecStartPre does."""

import grp
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

import harness

PREFIX = "usr/local"
CONF = "etc/batchd/batchd.ini"
NOBODY = 65534


def build_dir():
    """tools/test runs the suite with BATCHD_BIN=<build>/batchd."""
    d = Path(harness.BATCHD).resolve().parent
    return d if (d / "meson-private").is_dir() else None


@pytest.fixture(scope="module")
def dest():
    build = build_dir()
    if build is None or not shutil.which("meson"):
        pytest.skip(f"BATCHD_BIN={harness.BATCHD} is not in a meson build directory")
    # Under /tmp, not pytest's 0700 tmp_path: the unprivileged user must be
    # able to reach the installed files.
    d = Path(tempfile.mkdtemp(prefix="batchd-destdir-"))
    os.chmod(d, 0o755)
    r = subprocess.run(["meson", "install", "-C", str(build), "--destdir", str(d), "--no-rebuild"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    yield d
    shutil.rmtree(d)


def unit_settings(path):
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and line[0] not in "#;[" and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def run_as(uid, gid, groups, args):
    """args run with only these ids (setpriv takes numeric groups that need
    not exist in /etc/group)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}"]
    cmd += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return subprocess.run(cmd + ["--"] + args, capture_output=True, text=True, timeout=60,
                          env={**harness.SAN_ENV, "PATH": "/usr/bin:/bin"})


def batchd_group_gid(dest, tmp_path):
    """The gid systemd-sysusers gives group batchd from the installed
    sysusers.d file, applied in a throwaway root (not the host's /etc)."""
    sysusers = dest / PREFIX / "lib/sysusers.d/batchd.conf"
    assert sysusers.is_file(), "sysusers.d/batchd.conf not installed"
    assert re.search(r"(?m)^u\s+batchd\s", sysusers.read_text()), sysusers.read_text()
    if not shutil.which("systemd-sysusers"):
        # Same outcome by hand: a gid no group on this host has.
        used = {g.gr_gid for g in grp.getgrall()}
        return next(g for g in range(60999, 1000, -1) if g not in used)
    root = tmp_path / "target-root"
    (root / "etc").mkdir(parents=True)
    r = subprocess.run(["systemd-sysusers", f"--root={root}", str(sysusers)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for line in (root / "etc/group").read_text().splitlines():
        name, _, gid, _ = line.split(":")
        if name == "batchd":
            return int(gid)
    raise AssertionError("systemd-sysusers created no group batchd")


def test_installed_config_is_not_world_readable(dest):
    conf = dest / CONF
    assert conf.is_file(), f"{CONF} not installed"
    mode = stat.S_IMODE(conf.stat().st_mode)
    assert mode == 0o640, oct(mode)


def test_unit_runs_as_the_group_that_may_read_the_config(dest):
    units = list(dest.rglob("batchd.service"))
    assert len(units) == 1, units
    s = unit_settings(units[0])
    assert s.get("User") == "batchd" and s.get("Group") == "batchd", s
    assert "DynamicUser" not in s, "a dynamic user cannot be given read access to the config"
    assert s["ExecStart"].split()[-1] == "/" + CONF and s["ExecStartPre"].split()[-1] == "/" + CONF


def test_installed_batchd_checks_its_config_as_unprivileged_user(dest, tmp_path):
    conf = dest / CONF
    gid = batchd_group_gid(dest, tmp_path)
    # What install-config.sh does on a real install (chgrp batchd); with a
    # DESTDIR it leaves the build host's ownerships alone.
    os.chown(conf, 0, gid)
    binary = str(dest / PREFIX / "bin/batchd")

    r = run_as(NOBODY, NOBODY, [gid], [binary, "-t", "-c", str(conf)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is valid" in r.stdout

    # The old defect, and proof that the group is what grants access: the
    # same user outside group batchd cannot read it.
    r = run_as(NOBODY, NOBODY, [], [binary, "-t", "-c", str(conf)])
    assert r.returncode == 2 and "Permission denied" in r.stderr, r.stdout + r.stderr


def test_install_script_on_a_real_root_in_a_private_etc(dest, tmp_path):
    """What `sudo meson install` does without DESTDIR, run for real, but in
    a mount namespace where /etc is a copy: the script creates user batchd
    and makes the config root:batchd 0640, and that user's batchd -t
    passes. The host's /etc is not touched."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare")
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount --bind / /mnt"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here: {probe.stderr.strip()}")
    host_group = Path("/etc/group").read_text()
    etc = tmp_path / "etc"
    subprocess.run(["cp", "-a", "/etc", str(etc)], check=True)
    prefix = dest / PREFIX
    script = f"""
mount --bind '{etc}' /etc
MESON_INSTALL_PREFIX='{prefix}' '{harness.ROOT}/tools/install-config.sh' /etc/batchd/batchd.ini \
    share/doc/batchd/batchd.ini.example lib/sysusers.d/batchd.conf
stat -c 'owner=%U:%G mode=%a' /etc/batchd/batchd.ini
setpriv --reuid=batchd --regid=batchd --init-groups -- '{prefix}/bin/batchd' -t -c /etc/batchd/batchd.ini
"""
    r = subprocess.run(["unshare", "--mount", "sh", "-euc", script], capture_output=True, text=True, timeout=60,
                       env={**harness.SAN_ENV, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "owner=root:batchd mode=640" in r.stdout and "is valid" in r.stdout, r.stdout + r.stderr
    assert Path("/etc/group").read_text() == host_group, "the host's /etc/group changed"


def test_installed_unit_passes_systemd_analyze_verify(dest, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    unit = next(dest.rglob("batchd.service"))
    text = unit.read_text()
    assert "/usr/local/bin/batchd" in text and "/" + CONF in text
    # verify checks that ExecStart programs exist: point them at the DESTDIR.
    text = text.replace("/usr/local/bin/batchd", str(dest / PREFIX / "bin/batchd"))
    text = text.replace("/" + CONF, str(dest / CONF))
    copy = tmp_path / "batchd.service"
    copy.write_text(text)
    # Documentation= names man pages: verify runs man(1) on them, found in
    # the DESTDIR's man directory.
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MANPATH": str(dest / PREFIX / "share/man")})
    out = (r.stdout + r.stderr).strip()
    # Lines about other units (the host's own unit files, which verify also
    # loads) are not ours. Documentation= names the installed README under
    # /usr/local, which exists only in the DESTDIR; verify does not check it.
    mine = [ln for ln in out.splitlines() if "batchd" in ln]
    assert r.returncode == 0 and not mine, f"systemd-analyze verify ({r.returncode}):\n{out}"
