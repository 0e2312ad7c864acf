"""The Debian package (debian/, tools/package): what it holds, and that it
installs into a root where the installed batchd checks the installed
config as a user of group batchd.

tools/package builds it (dpkg-buildpackage -us -uc -b, then lintian, whose
errors and warnings fail it) once per tree: a tree already packaged is not
built again. Installing: `dpkg --root=DIR --force-script-chrootless
--force-depends -i` into an empty dpkg database under DIR. dpkg 1.21 runs
the maintainer scripts unchrooted with DPKG_ROOT=DIR (DIR has no /bin/sh to
chroot into), and every one of ours honours it: systemd-sysusers --root
creates the user in DIR/etc, the postinst resolves the group there,
deb-systemd-helper keeps its state under DIR. --force-depends: DIR has no
libc package; the binary runs with the host's libraries, which are the
ones it was built against. The host's /etc and systemd state are checked
untouched."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness import ROOT

CONF = "etc/batchd/batchd.ini"
NOBODY = 65534


def meson_version():
    m = re.search(r"^\s*version:\s*'([^']+)'", (ROOT / "meson.build").read_text(), re.M)
    return m.group(1)


@pytest.fixture(scope="module")
def deb():
    missing = [t for t in ("dpkg-buildpackage", "dh", "lintian", "dpkg-deb") if not shutil.which(t)]
    if missing:
        pytest.skip(f"cannot build the package: {', '.join(missing)} not installed "
                    "(apt-get install debhelper dpkg-dev fakeroot lintian; tools/test does as root)")
    r = subprocess.run([str(ROOT / "tools" / "package")], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"tools/package failed:\n{r.stderr[-4000:]}"
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.name == f"batchd_{meson_version()}_amd64.deb" and path.is_file(), r.stdout
    return path


def contents(deb):
    """{path: (mode string, owner/group)} from dpkg-deb -c."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    entries = {}
    for line in out.splitlines():
        f = line.split()
        entries[f[5].lstrip(".")] = (f[0], f[1])
    return entries


def test_lintian_is_clean(deb):
    """tools/package fails on lintian errors and warnings; what is left
    (info, pedantic) is shown and must be empty too: every tag is fixed or
    overridden with a comment saying why (debian/batchd.lintian-overrides)."""
    text = (deb.parent / "lintian.txt").read_text()
    tags = [ln for ln in text.splitlines() if re.match(r"^[EWIPX]: ", ln)]
    assert not tags, "\n".join(tags)


def test_deb_holds_the_files_with_their_modes(deb):
    c = contents(deb)
    want = {
        "/usr/bin/batchd": "-rwxr-xr-x",
        "/etc/batchd/batchd.ini": "-rw-r-----",   # secrets once edited: never world-readable
        "/lib/systemd/system/batchd.service": "-rw-r--r--",
        "/usr/lib/sysusers.d/batchd.conf": "-rw-r--r--",
        "/usr/share/man/man8/batchd.8.gz": "-rw-r--r--",
        "/usr/share/man/man5/batchd.ini.5.gz": "-rw-r--r--",
        "/usr/share/doc/batchd/README.md": "-rw-r--r--",
        "/usr/share/doc/batchd/batchd.ini.example": "-rw-r--r--",
        "/usr/share/doc/batchd/copyright": "-rw-r--r--",
        "/usr/share/doc/batchd/changelog.gz": "-rw-r--r--",
    }
    for path, mode in want.items():
        assert path in c, f"{path} not in the package"
        assert c[path] == (mode, "root/root"), f"{path}: {c[path]}"
    assert not [p for p in c if "/usr/local" in p], "files under /usr/local"


def test_conffiles_and_control(deb):
    r = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["/etc/batchd/batchd.ini"]
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Version", "Depends", "Architecture"],
                            capture_output=True, text=True, check=True).stdout
    assert f"Version: {meson_version()}" in fields
    for lib in ("libuv1", "libhiredis", "libpq5", "libinih1", "libjansson4", "libjwt", "libssl3", "systemd"):
        assert lib in fields, f"Depends lacks {lib}: {fields}"
    # A release build: no sanitizer runtime linked in.
    assert "libasan" not in fields and "libubsan" not in fields


@pytest.fixture(scope="module")
def root(deb):
    if os.geteuid() != 0:
        pytest.skip("dpkg --root with maintainer scripts needs root (CI runs as root)")
    host = {p: Path(p).read_text() for p in ("/etc/passwd", "/etc/group")}
    host_dsh = sorted(Path("/var/lib/systemd").rglob("batchd*")) if Path("/var/lib/systemd").is_dir() else []
    d = Path(tempfile.mkdtemp(prefix="batchd-pkgroot-"))
    os.chmod(d, 0o755)  # the unprivileged user must reach the files
    for sub in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log", "etc"):
        (d / sub).mkdir(parents=True)
    (d / "var/lib/dpkg/status").touch()
    r = dpkg(d, "-i", str(deb))
    assert r.returncode == 0, r.stdout + r.stderr
    yield d
    for p, text in host.items():
        assert Path(p).read_text() == text, f"the host's {p} changed"
    if Path("/var/lib/systemd").is_dir():
        assert sorted(Path("/var/lib/systemd").rglob("batchd*")) == host_dsh, "host systemd state changed"
    shutil.rmtree(d)


def dpkg(root, *args):
    return subprocess.run(["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", *args],
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"})


def batchd_gid(root):
    for line in (root / "etc/group").read_text().splitlines():
        name, _, gid, _ = line.split(":")
        if name == "batchd":
            return int(gid)
    raise AssertionError("the postinst created no group batchd in the root")


def run_as(groups, args):
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}"]
    cmd += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return subprocess.run(cmd + ["--"] + args, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


def test_install_creates_user_and_makes_config_root_batchd_0640(root):
    assert re.search(r"(?m)^batchd:x:\d+:\d+:[^:]*:/nonexistent:", (root / "etc/passwd").read_text())
    st = (root / CONF).stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, batchd_gid(root), 0o640)
    q = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Status} ${Conffiles}",
                        "batchd"], capture_output=True, text=True)
    assert q.stdout.startswith("install ok installed") and "/etc/batchd/batchd.ini" in q.stdout, q.stdout


def test_installed_batchd_checks_installed_config_as_group_batchd(root):
    binary, conf = str(root / "usr/bin/batchd"), str(root / CONF)
    r = run_as([batchd_gid(root)], [binary, "-t", "-c", conf])
    assert r.returncode == 0 and "is valid" in r.stdout, r.stdout + r.stderr
    # The group is what grants it: without it the same user cannot read it.
    r = run_as([], [binary, "-t", "-c", conf])
    assert r.returncode == 2 and "Permission denied" in r.stderr, r.stdout + r.stderr
    r = subprocess.run([binary, "--version"], capture_output=True, text=True)
    assert r.stdout.strip() == f"batchd {meson_version()}"


def test_installed_unit_runs_usr_bin_batchd_and_is_not_enabled(root):
    unit = (root / "lib/systemd/system/batchd.service").read_text()
    assert "ExecStart=/usr/bin/batchd -c /etc/batchd/batchd.ini" in unit
    assert "ExecStartPre=/usr/bin/batchd -t -c /etc/batchd/batchd.ini" in unit
    assert "/usr/local" not in unit
    # --no-enable: no wants/ link in the root (nor on the host).
    assert not list((root / "etc").rglob("multi-user.target.wants/batchd.service"))


def test_installed_unit_passes_systemd_analyze_verify(root, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    text = (root / "lib/systemd/system/batchd.service").read_text()
    # verify checks that ExecStart programs exist, and runs man(1) on the
    # Documentation= pages: point both into the root.
    text = text.replace("/usr/bin/batchd", str(root / "usr/bin/batchd")).replace("/" + CONF, str(root / CONF))
    copy = tmp_path / "batchd.service"
    copy.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MANPATH": str(root / "usr/share/man")})
    out = (r.stdout + r.stderr).strip()
    mine = [ln for ln in out.splitlines() if "batchd" in ln]
    assert r.returncode == 0 and not mine, f"systemd-analyze verify ({r.returncode}):\n{out}"


def test_installed_man_pages_render_without_warnings(root):
    if not shutil.which("man"):
        pytest.skip("man-db not installed")
    for page, needle in (("man8/batchd.8.gz", "--settings"), ("man5/batchd.ini.5.gz", "max_cached_pages")):
        r = subprocess.run(["man", "--warnings", "-l", str(root / "usr/share/man" / page)], capture_output=True,
                           text=True, env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LC_ALL": "C.UTF-8"})
        assert r.returncode == 0 and not r.stderr.strip(), f"{page}: {r.stderr}"
        assert needle in r.stdout.replace("\u2010", "-"), page


def test_reinstall_keeps_an_edited_config_and_purge_removes_it(root, deb):
    conf = root / CONF
    conf.write_text(conf.read_text().replace("admin_token = change-me", "admin_token = kept-by-dpkg"))
    r = dpkg(root, "-i", str(deb))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "admin_token = kept-by-dpkg" in conf.read_text()
    st = conf.stat()
    assert (st.st_gid, st.st_mode & 0o777) == (batchd_gid(root), 0o640)
    r = dpkg(root, "--purge", "batchd")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not conf.exists() and not (root / "usr/bin/batchd").exists()
