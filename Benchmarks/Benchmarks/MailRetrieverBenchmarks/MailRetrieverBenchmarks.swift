// Micro-benchmarks of MailRetriever (issue 15): `pop3 fetch`'s delivery into a Maildir, the hot path the second
// performance round changed (concurrent fsyncs through DurabilityPool). One operation is one batch as `pop3 fetch`
// stores it: `commitBatchLimit` (32) messages of 50 KB written as they arrive on the wire (CRLF, in 16 KiB pieces),
// each committed (its fsync and link into new/ start on the pool), then `flush()` (waits for them, fsyncs new/ once)
// and the batch journaled as delivered. Every file and directory is fsynced, so the figure is the disk's as much as
// ours: the mallocs per batch are the part that is ours alone.
//
// The Maildir and the journal go under $TMPDIR (or /tmp) and are removed afterwards; new/ is emptied before each
// sample (outside the measurement) so that the directory does not grow over the run.

import Benchmark
import Foundation
import MailRetriever
import NIOCore

let maxDuration: Duration = .seconds(Int(ProcessInfo.processInfo.environment["MICROBENCH_SECONDS"] ?? "") ?? 2)

let messageSize = 50 * 1024
let pieceSize = 16 * 1024

/// A 50 KB message as it arrives from the server (CRLF endings), cut into TLS-record-sized pieces.
let pieces: [ByteBuffer] = {
    var text = Array("From: sender@example.org\r\nTo: alice@example.org\r\nSubject: benchmark\r\n\r\n".utf8)
    let line = Array("the quick brown fox jumps over the lazy dog 0123456789\r\n".utf8)
    while text.count < messageSize { text += line }
    text = Array(text.prefix(messageSize - 2)) + Array("\r\n".utf8)
    return stride(from: 0, to: text.count, by: pieceSize).map {
        ByteBuffer(bytes: text[$0..<min($0 + pieceSize, text.count)])
    }
}()

final class DeliveryFixture: @unchecked Sendable {
    static let root = (ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp") + "/pop3-microbench-retriever-\(getpid())"
    let maildir: MaildirDestination
    let journal: UIDLJournal
    var next = 0

    init() throws {
        let key = AccountKey(user: "alice", host: "mail.example.org", port: 995)
        try FileManager.default.createDirectory(atPath: Self.root + "/state", withIntermediateDirectories: true)
        self.journal = try UIDLJournal.open(key, stateDirectory: Self.root + "/state")
        self.maildir = MaildirDestination(path: Self.root + "/Maildir", accountKey: key)
        try self.maildir.recover(journal: self.journal)
    }

    /// One batch: write, commit, flush, journal.
    func deliverBatch() throws {
        var uids: [String] = []
        for _ in 0..<self.maildir.commitBatchLimit {
            self.next += 1
            let uid = "uid\(self.next)"
            let sink = try self.maildir.begin(uid: uid)
            for piece in pieces { try sink.write(piece) }
            try sink.commit()
            uids.append(uid)
        }
        try self.maildir.flush()
        try self.journal.markDelivered(uids)
    }

    func emptyNew() {
        let folder = self.maildir.path + "/new"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] {
            unlink(folder + "/" + name)
        }
    }

    static func removeAll() {
        try? FileManager.default.removeItem(atPath: self.root)
    }
}

nonisolated(unsafe) var fixture: DeliveryFixture?

let benchmarks = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        maxDuration: maxDuration,
        maxIterations: 1_000
    )

    // Where the file system has O_TMPFILE (ext4, xfs, tmpfs, btrfs) a message is an unnamed file in new/ named by
    // linkat(2) once fsynced; elsewhere it goes through tmp/. Which one ran is in the suite's README.
    Benchmark(
        "Maildir delivery: 32 × 50 KB batch, fsynced",
        configuration: .init(
            setup: { fixture = try DeliveryFixture() },
            teardown: {
                fixture = nil
                DeliveryFixture.removeAll()
            }
        )
    ) { benchmark in
        let fixture = fixture!
        fixture.emptyNew()
        benchmark.startMeasurement()
        try fixture.deliverBatch()
        benchmark.stopMeasurement()
    }
}
