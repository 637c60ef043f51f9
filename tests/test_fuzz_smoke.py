"""Fuzz smoke: every parser target under libFuzzer + AddressSanitizer for a short while (what `scripts/fuzz 45` did).

The fuzzer is built once per session with `swift build --sanitize=fuzzer --sanitize=address --product POP3Fuzzer
--scratch-path .build-fuzz -Xswiftc -DFUZZING` (set POP3_FUZZER to a prebuilt POP3Fuzzer to skip the build).
POP3_FUZZ_SECONDS sets the time per target (default 45). Marked `fuzz` (it builds with swift): deselect it with
-m "not fuzz" while iterating on other tests.

A crash leaves its input in .build-fuzz/crashes/TARGET/; copy it to Tests/Fuzz/TARGET/ so that FuzzRegressionTests
replays it forever. For longer runs use scripts/fuzz.
"""
import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = os.path.join(REPO, ".build-fuzz")
TARGETS = ["command", "response", "sasl", "dotstuffing", "handshake", "lmtp"]  # Sources/POP3FuzzTargets
SECONDS = int(os.environ.get("POP3_FUZZ_SECONDS", "45"))

pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="session")
def fuzzer():
    prebuilt = os.environ.get("POP3_FUZZER")
    if prebuilt:
        if not os.access(prebuilt, os.X_OK):
            pytest.fail(f"POP3_FUZZER={prebuilt} is not an executable", pytrace=False)
        return prebuilt
    build = ["swift", "build", "--sanitize=fuzzer", "--sanitize=address", "--product", "POP3Fuzzer",
             "--scratch-path", SCRATCH, "-Xswiftc", "-DFUZZING"]
    r = subprocess.run(build, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        pytest.fail("fuzz: build failed:\n" + "\n".join((r.stdout + r.stderr).splitlines()[-20:]), pytrace=False)
    r = subprocess.run(["swift", "build", "--scratch-path", SCRATCH, "--show-bin-path"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return os.path.join(r.stdout.strip().splitlines()[-1], "POP3Fuzzer")


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target(fuzzer, target):
    """SECONDS of coverage-guided fuzzing, seeded with Tests/Fuzz/TARGET: libFuzzer exits 0 (no crash, leak,
    timeout or out-of-memory)."""
    corpus = os.path.join(SCRATCH, "corpus", target)
    crashes = os.path.join(SCRATCH, "crashes", target)
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(crashes, exist_ok=True)
    seeds = os.path.join(REPO, "Tests", "Fuzz", target)
    for name in os.listdir(seeds) if os.path.isdir(seeds) else []:
        if not os.path.exists(os.path.join(corpus, name)):  # cp -n
            shutil.copy(os.path.join(seeds, name), corpus)
    log_path = os.path.join(SCRATCH, f"{target}.log")
    with open(log_path, "w") as log:
        r = subprocess.run([fuzzer, f"-max_total_time={SECONDS}", "-max_len=4096", "-timeout=10", "-rss_limit_mb=2048",
                            f"-artifact_prefix={crashes}/", corpus],
                           stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, POP3_FUZZ_TARGET=target),
                           timeout=SECONDS + 300)
    with open(log_path, errors="replace") as f:
        text = f.read()
    execs = re.findall(r"stat::number_of_executed_units: *(\d+)", text) or re.findall(r"#(\d+)", text)
    print(f"fuzz {target}: {SECONDS}s, {execs[-1] if execs else '?'} execs")
    errors = [line for line in text.splitlines() if re.search(r"ERROR|SUMMARY|Fatal|panic", line)][:5]
    assert r.returncode == 0, (f"fuzz {target}: exit {r.returncode}, inputs in {crashes}: {os.listdir(crashes)}; "
                               f"log {log_path}: " + " | ".join(errors))
