// Micro-benchmarks of MailStore (issue 5): opening (lock + index) and releasing a Maildir of 20,000 messages through
// the public MaildirProvider API, as pop3d does at login. Run with `scripts/microbench` (see Benchmarks/README.md).
//
// - cold:   no dovecot-uidlist (first access ever): every file is read once to learn its size, the uidlist written.
// - warm:   dovecot-uidlist present and current, a new MaildirProvider per open (as after a restart of pop3d).
// - reopen: the same MaildirProvider opens it again (as the next login in the same pop3d process), so any
//           in-process index cache of the provider applies.
//
// The OS page cache is warm in all three (the files were just written or read): "cold" is about our index, not the
// disk. The Maildirs go under $TMPDIR (or /tmp) and are removed afterwards.

import Benchmark
import Foundation
import Logging
import MailStore
import NIOCore
import NIOPosix

/// Seconds per benchmark; `MICROBENCH_SECONDS` overrides (the machine is shared: keep it small).
let maxDuration: Duration = .seconds(Int(ProcessInfo.processInfo.environment["MICROBENCH_SECONDS"] ?? "") ?? 2)

let messageCount = 20_000
let messageSize = 2 * 1024

/// A Maildir of `messageCount` messages of `messageSize` bytes in `cur/`, named as an MDA without size fields names
/// them (so nothing can be learnt from the name), created on first use and removed by `removeAll`.
final class MaildirFixture: @unchecked Sendable {
    static let root = (ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp") + "/pop3-microbench-\(getpid())"
    let path: String

    init(name: String) throws {
        self.path = Self.root + "/" + name + "/Maildir"
        let fm = FileManager.default
        for sub in ["new", "cur", "tmp"] {
            try fm.createDirectory(atPath: self.path + "/" + sub, withIntermediateDirectories: true)
        }
        var body = Array("From: sender@example.org\nTo: alice@example.org\nSubject: benchmark\n\n".utf8)
        let line = Array("the quick brown fox jumps over the lazy dog 0123456789\n".utf8)
        while body.count < messageSize { body += line }
        body = Array(body.prefix(messageSize - 1)) + [UInt8(ascii: "\n")]
        let data = Data(body)
        for index in 0..<messageCount {
            let name = "\(1_700_000_000 + index).M\(index)P4242.bench:2,S"
            guard fm.createFile(atPath: self.path + "/cur/" + name, contents: data) else {
                throw CocoaError(.fileWriteUnknown)
            }
        }
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: (self.path as NSString).deletingLastPathComponent)
    }

    func removeIndex() {
        unlink(self.path + "/dovecot-uidlist")
    }

    static func removeAll() {
        try? FileManager.default.removeItem(atPath: self.root)
    }
}

func makeProvider() -> MaildirProvider {
    var logger = Logger(label: "microbench")
    logger.logLevel = .critical
    return MaildirProvider(threadPool: .singleton, logger: logger)
}

/// Opens, checks the snapshot and releases: one login's worth of maildrop work.
func openAndRelease(_ provider: MaildirProvider, _ fixture: MaildirFixture) async throws {
    let maildrop = try await provider.openMaildrop(user: "alice", path: fixture.path, owner: nil)
    precondition(maildrop.messages.count == messageCount)
    blackHole(maildrop.messages.last?.uniqueID)
    await maildrop.release()
}

nonisolated(unsafe) var fixtures: [String: MaildirFixture] = [:]

let benchmarks = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, .mallocCountTotal],
        warmupIterations: 1,
        maxDuration: maxDuration,
        maxIterations: 1_000
    )
    Benchmark.teardown = { MaildirFixture.removeAll() }

    Benchmark("Maildir open: 20,000 messages, cold (no dovecot-uidlist)") { benchmark in
        let fixture = fixtures["cold"]!
        fixture.removeIndex()
        let provider = makeProvider()
        benchmark.startMeasurement()
        do { try await openAndRelease(provider, fixture) } catch { benchmark.error("\(error)") }
        benchmark.stopMeasurement()
    } setup: {
        fixtures["cold"] = try MaildirFixture(name: "cold")
    } teardown: {
        fixtures.removeValue(forKey: "cold")?.remove()
    }

    Benchmark("Maildir open: 20,000 messages, warm (dovecot-uidlist, new provider)") { benchmark in
        let fixture = fixtures["warm"]!
        let provider = makeProvider()
        benchmark.startMeasurement()
        do { try await openAndRelease(provider, fixture) } catch { benchmark.error("\(error)") }
        benchmark.stopMeasurement()
    } setup: {
        let fixture = try MaildirFixture(name: "warm")
        try await openAndRelease(makeProvider(), fixture)  // builds dovecot-uidlist
        fixtures["warm"] = fixture
    } teardown: {
        fixtures.removeValue(forKey: "warm")?.remove()
    }

    let sharedProvider = makeProvider()
    Benchmark("Maildir open: 20,000 messages, reopen (same provider)") { benchmark in
        do { try await openAndRelease(sharedProvider, fixtures["reopen"]!) } catch { benchmark.error("\(error)") }
    } setup: {
        let fixture = try MaildirFixture(name: "reopen")
        // Left alone for a moment first, as a mailbox between two polls of a mail client is: an in-process index
        // cache may trust only directory stamps older than its settle margin (MaildirIndexCache: 1 s).
        try await Task.sleep(for: .milliseconds(1_500))
        try await openAndRelease(sharedProvider, fixture)
        fixtures["reopen"] = fixture
    } teardown: {
        fixtures.removeValue(forKey: "reopen")?.remove()
    }
}
