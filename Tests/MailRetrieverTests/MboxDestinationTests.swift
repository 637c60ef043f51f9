import Crypto
import Foundation
import NIOCore
import SystemIO
import Testing

@testable import MailRetriever

@Suite struct MboxrdQuoterTests {
    static func quote(_ chunks: [String]) -> String {
        var quoter = MboxrdQuoter()
        var output: [UInt8] = []
        for chunk in chunks { quoter.quote(Array(chunk.utf8), into: &output) }
        quoter.finish(into: &output)
        return String(decoding: output, as: UTF8.self)
    }

    static let input = "From here\n>From there\n>>From x\nFromage\n> From\nX From y\n>>>\nFrom"
    static let expected = ">From here\n>>From there\n>>>From x\nFromage\n> From\nX From y\n>>>\nFrom"

    @Test func quotesFromLines() {
        #expect(Self.quote([Self.input]) == Self.expected)
    }

    @Test func quotingIsIndependentOfChunking() {
        let bytes = Array(Self.input.utf8)
        for i in 0...bytes.count {
            for j in i...bytes.count {
                let chunks = [bytes[0..<i], bytes[i..<j], bytes[j...]].map { String(decoding: $0, as: UTF8.self) }
                #expect(Self.quote(chunks) == Self.expected, "split at \(i), \(j)")
            }
        }
    }
}

@Suite struct MboxDestinationTests {
    func setUp(sender: String? = nil) throws -> (TemporaryDirectory, UIDLJournal, MboxDestination) {
        let dir = try TemporaryDirectory()
        try FileSystem.makeDirectories(dir.file("state"))
        let journal = try UIDLJournal.open(testKey, stateDirectory: dir.file("state"))
        let mbox = MboxDestination(path: dir.file("inbox.mbox"), accountKey: testKey, envelopeSender: sender)
        try mbox.recover(journal: journal)
        return (dir, journal, mbox)
    }

    static var fromLinePattern: Regex<(Substring, Substring, Substring, Substring)> {
        #/^From (\S+) (Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 1-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-6][0-9] [0-9]{4}$/#
    }

    @Test func writesMboxrdWithFromLine() throws {
        let (dir, journal, mbox) = try setUp()
        try deliver(["Subject: a\r\n\r\nFrom me\r", "\n>From you\r\nend"], uid: "1", to: mbox, journal: journal)
        let text = try contents(dir.file("inbox.mbox"))
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let match = try #require(try Self.fromLinePattern.wholeMatch(in: String(lines[0])))
        #expect(match.1 == "MAILER-DAEMON")
        #expect(lines.dropFirst().joined(separator: "\n") == "Subject: a\n\n>From me\n>>From you\nend\n\n")
        var st = stat()
        #expect(stat(dir.file("inbox.mbox"), &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(!FileManager.default.fileExists(atPath: dir.file("inbox.mbox.lock")))
        #expect(journal.pending == nil)
    }

    @Test func senderFromOptionThenReturnPath() throws {
        let (dir, journal, mbox) = try setUp()
        try deliver(
            ["Return-Path: <bounce@example.org>\r\nSubject: x\r\n\r\nbody\r\n"], uid: "1", to: mbox, journal: journal)
        let (dir2, journal2, mbox2) = try setUp(sender: "env@example.net")
        try deliver(["Return-Path: <bounce@example.org>\r\n\r\nbody\r\n"], uid: "1", to: mbox2, journal: journal2)
        #expect(try contents(dir.file("inbox.mbox")).hasPrefix("From bounce@example.org "))
        #expect(try contents(dir2.file("inbox.mbox")).hasPrefix("From env@example.net "))
        #expect(MboxDestination.sanitizedSender("<>") == "MAILER-DAEMON")
        #expect(MboxDestination.sanitizedSender("a b") == "a_b")
    }

    @Test func appendsSeparatedMessages() throws {
        let (dir, journal, mbox) = try setUp()
        try writeFile(dir.file("inbox.mbox"), "From old Mon Jan  1 00:00:00 2024\nno final newline")
        try deliver(["A: 1\r\n\r\none\r\n"], uid: "1", to: mbox, journal: journal)
        try deliver(["A: 2\r\n\r\ntwo\r\n"], uid: "2", to: mbox, journal: journal)
        let text = try contents(dir.file("inbox.mbox"))
        let records = text.split(separator: "\nFrom ", omittingEmptySubsequences: false)
        #expect(records.count == 3)
        #expect(records[0] == "From old Mon Jan  1 00:00:00 2024\nno final newline")
        #expect(records[1].hasSuffix("\nA: 1\n\none\n"))  // the blank line's LF went to the separator
        #expect(records[2].hasSuffix("\nA: 2\n\ntwo\n\n"))
    }

    /// kill -9 after the append was fsync'ed but before the journal recorded the delivery.
    @Test func recoveryAcceptsCompleteAppend() throws {
        let (dir, journal, mbox) = try setUp()
        try deliver(["A: 1\r\n\r\none\r\n"], uid: "1", to: mbox, journal: journal)
        let sink = try mbox.begin(uid: "2")
        try sink.write(buffer("A: 2\r\n\r\ntwo\r\n"))
        try sink.commit()  // crash before markDelivered
        let before = try contents(dir.file("inbox.mbox"))

        let journal2 = try UIDLJournal.open(testKey, stateDirectory: dir.file("state"))
        #expect(journal2.pending?.uid == "2")
        let mbox2 = MboxDestination(path: dir.file("inbox.mbox"), accountKey: testKey)
        try mbox2.recover(journal: journal2)
        #expect(journal2.entry(for: "2")?.delivered == true)
        #expect(journal2.pending == nil)
        #expect(try contents(dir.file("inbox.mbox")) == before)
        #expect(mbox2.recoveryWarnings.isEmpty)
    }

    /// Builds the state a kill -9 in the middle of an append leaves: pending record, spool, torn record in the mbox.
    func tornAppend(dir: TemporaryDirectory, journal: UIDLJournal, mbox: MboxDestination, keep: Int) throws -> String {
        let before = try contents(dir.file("inbox.mbox"))
        let fromLine = Array("From MAILER-DAEMON Mon Jan  1 00:00:00 2024\n".utf8)
        let body = Array("A: 2\n\ntwo\n\n".utf8)
        let record = fromLine + body
        try writeFile(try #require(mbox.spoolPath), String(decoding: body, as: UTF8.self))
        try journal.setPending(
            PendingAppend(
                uid: "2",
                offset: UInt64(before.utf8.count),
                length: UInt64(record.count),
                sha256: hexString(SHA256.hash(data: record))
            ))
        try appendFile(dir.file("inbox.mbox"), String(decoding: record.prefix(keep), as: UTF8.self))
        return before
    }

    @Test(arguments: [1, 5, 20, 46, 50])
    func recoveryTruncatesPartialAppend(keep: Int) throws {
        let (dir, journal, mbox) = try setUp()
        try deliver(["A: 1\r\n\r\none\r\n"], uid: "1", to: mbox, journal: journal)
        let before = try tornAppend(dir: dir, journal: journal, mbox: mbox, keep: keep)
        #expect(try contents(dir.file("inbox.mbox")) != before)

        let journal2 = try UIDLJournal.open(testKey, stateDirectory: dir.file("state"))
        let mbox2 = MboxDestination(path: dir.file("inbox.mbox"), accountKey: testKey)
        try mbox2.recover(journal: journal2)
        #expect(try contents(dir.file("inbox.mbox")) == before)
        #expect(journal2.pending == nil)
        #expect(journal2.entry(for: "2")?.delivered != true)
        #expect(!FileManager.default.fileExists(atPath: try #require(mbox2.spoolPath)))
        // The message is then delivered normally.
        try deliver(["A: 2\r\n\r\ntwo\r\n"], uid: "2", to: mbox2, journal: journal2)
        #expect(try contents(dir.file("inbox.mbox")).hasSuffix("\nA: 2\n\ntwo\n\n"))
    }

    /// A mail reader rewrote the mbox after the crash: what follows the offset is not provably ours, so it stays.
    @Test func recoveryLeavesForeignDataAlone() throws {
        let (dir, journal, mbox) = try setUp()
        try deliver(["A: 1\r\n\r\none\r\n"], uid: "1", to: mbox, journal: journal)
        _ = try tornAppend(dir: dir, journal: journal, mbox: mbox, keep: 30)
        try appendFile(dir.file("inbox.mbox"), "\nFrom other Mon Jan  1 00:00:00 2024\nS: theirs\n\n")
        let after = try contents(dir.file("inbox.mbox"))

        let journal2 = try UIDLJournal.open(testKey, stateDirectory: dir.file("state"))
        let mbox2 = MboxDestination(path: dir.file("inbox.mbox"), accountKey: testKey)
        try mbox2.recover(journal: journal2)
        #expect(try contents(dir.file("inbox.mbox")) == after)
        #expect(journal2.pending == nil)
        #expect(journal2.entry(for: "2")?.delivered != true)
        #expect(mbox2.recoveryWarnings.count == 1)
    }

    @Test func recoveryWithNothingAppendedClearsPending() throws {
        let (dir, journal, mbox) = try setUp()
        try deliver(["A: 1\r\n\r\none\r\n"], uid: "1", to: mbox, journal: journal)
        let before = try tornAppend(dir: dir, journal: journal, mbox: mbox, keep: 0)
        let journal2 = try UIDLJournal.open(testKey, stateDirectory: dir.file("state"))
        let mbox2 = MboxDestination(path: dir.file("inbox.mbox"), accountKey: testKey)
        try mbox2.recover(journal: journal2)
        #expect(try contents(dir.file("inbox.mbox")) == before)
        #expect(journal2.pending == nil)
    }

    @Test func staleDotlockIsBrokenAndLiveOneWaitedFor() throws {
        let (dir, journal, mbox) = try setUp()
        let lockPath = dir.file("inbox.mbox.lock")
        try writeFile(lockPath, "99999\n")
        var times = [timeval(tv_sec: 1, tv_usec: 0), timeval(tv_sec: 1, tv_usec: 0)]
        #expect(utimes(lockPath, &times) == 0)  // 1970: stale
        try deliver(["A: 1\r\n\r\none\r\n"], uid: "1", to: mbox, journal: journal)
        #expect(!FileManager.default.fileExists(atPath: lockPath))

        try writeFile(lockPath, "\(getpid())\n")  // fresh: held by someone alive
        mbox.dotlockTimeout = 1
        let sink = try mbox.begin(uid: "2")
        try sink.write(buffer("A: 2\r\n\r\ntwo\r\n"))
        #expect(throws: MailRetrieverError.mboxLockTimeout(path: dir.file("inbox.mbox"))) { try sink.commit() }
        #expect(journal.pending == nil)
        #expect(FileManager.default.fileExists(atPath: lockPath))  // not ours to remove
    }

    @Test func freshDotlockOfADeadProcessIsBrokenAtOnce() throws {
        // What a run killed with SIGKILL leaves behind: the next run must not wait `staleDotlockAge` for it.
        let (dir, journal, mbox) = try setUp()
        let lockPath = dir.file("inbox.mbox.lock")
        try writeFile(lockPath, "2147483646\n")  // no such process
        mbox.dotlockTimeout = 1
        try deliver(["A: 1\r\n\r\none\r\n"], uid: "1", to: mbox, journal: journal)
        #expect(journal.entry(for: "1")?.delivered == true)
        #expect(!FileManager.default.fileExists(atPath: lockPath))

        // Orphans of a process killed between writing its PID and linking the dotlock go; a live one's stay.
        let orphan = dir.file("inbox.mbox.lock.2147483646.1f")
        let live = dir.file("inbox.mbox.lock.\(getpid()).2e")
        try writeFile(orphan, "2147483646\n")
        try writeFile(live, "\(getpid())\n")
        try MboxDestination(path: dir.file("inbox.mbox"), accountKey: testKey).recover(journal: journal)
        #expect(!FileManager.default.fileExists(atPath: orphan))
        #expect(FileManager.default.fileExists(atPath: live))
        try FileManager.default.removeItem(atPath: live)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.contains(".lock") }.isEmpty)

        try writeFile(lockPath, "not a pid\n")  // foreign format, fresh: waited for
        let sink = try mbox.begin(uid: "2")
        try sink.write(buffer("A: 2\r\n\r\ntwo\r\n"))
        #expect(throws: MailRetrieverError.mboxLockTimeout(path: dir.file("inbox.mbox"))) { try sink.commit() }
        #expect(FileManager.default.fileExists(atPath: lockPath))
    }
}
