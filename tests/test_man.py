"""The man pages (issue 14): dist/man/pop3d.8, pop3.1 and pop3d.yaml.5 are what scripts/man generates from the
binaries under test (so they never fall behind the argument parser or the configuration keys), groff renders them
without a warning, and they mention every subcommand and every configuration key."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ("pop3d.8", "pop3.1", "pop3d.yaml.5")


@pytest.fixture(scope="module")
def generated(bin_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("man")
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "man"), "--bin-dir", bin_dir, "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def test_checked_in_pages_are_current(generated):
    for page in PAGES:
        with open(os.path.join(REPO, "dist", "man", page)) as f:
            committed = f.read()
        assert (generated / page).read_text() == committed, f"dist/man/{page} is stale: run scripts/man"


def test_groff_renders_without_warnings(generated):
    groff = shutil.which("groff")
    if groff is None:
        pytest.fail("groff is missing (apt-get install groff-base, as scripts/test-deps does)")
    for page in PAGES:
        r = subprocess.run([groff, "-man", "-Tutf8", "-ww", str(generated / page)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and r.stderr == "", (page, r.stderr[:400])


def subcommands(command, path=()):
    for child in command.get("subcommands", []):
        if child["commandName"] != "help" and child.get("shouldDisplay", True):
            yield path + (child["commandName"],)
            yield from subcommands(child, path + (child["commandName"],))


def test_every_subcommand_and_key_is_in_a_page(generated, pop3d_bin, pop3_bin, pop3d):
    for binary, page in ((pop3d_bin, "pop3d.8"), (pop3_bin, "pop3.1")):
        tree = json.loads(subprocess.run([binary, "--experimental-dump-help"], capture_output=True, text=True,
                                         timeout=60).stdout)["command"]
        text = (generated / page).read_text().replace("\\-", "-")
        for path in subcommands(tree):
            assert f".SS {' '.join(path)}" in text, f"{page} lacks {' '.join(path)}"
    r = pop3d.pop3d("check-config", "--config", pop3d.config)
    keys, stack = [], []
    for line in r.stdout.decode().splitlines():
        m = re.match(r"(\s*)([A-Za-z0-9_]+):\s*(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if m.group(3) == "":
            stack.append((indent, m.group(2)))
        else:
            keys.append(".".join([k for _, k in stack] + [m.group(2)]))
    assert len(keys) > 60, keys
    keys += ["auth.oauth2.jwks", "auth.oauth2.issuer", "auth.oauth2.audience", "auth.oauth2.username_claim",
             "auth.oauth2.clock_skew", "auth.oauth2.introspection_url", "auth.oauth2.client_credentials_file"]
    text = (generated / "pop3d.yaml.5").read_text().replace("\\-", "-")
    missing = [k for k in keys if f".B {k}\n" not in text]
    assert not missing, f"pop3d.yaml.5 lacks {missing}"
