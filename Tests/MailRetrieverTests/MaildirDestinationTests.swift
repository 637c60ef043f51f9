import Foundation
import NIOCore
import SystemIO
import Testing

@testable import MailRetriever

@Suite struct CRLFToLFTests {
    /// Naive reference: CRLF → LF over the whole text at once.
    static func reference(_ input: [UInt8]) -> [UInt8] {
        var output: [UInt8] = []
        var index = 0
        while index < input.count {
            if input[index] == UInt8(ascii: "\r"), index + 1 < input.count, input[index + 1] == UInt8(ascii: "\n") {
                index += 1
                continue
            }
            output.append(input[index])
            index += 1
        }
        return output
    }

    static func convert(_ chunks: [[UInt8]]) -> [UInt8] {
        var converter = CRLFToLF()
        var output: [UInt8] = []
        for chunk in chunks { chunk.withUnsafeBytes { converter.convert($0, into: &output) } }
        converter.finish(into: &output)
        return output
    }

    @Test func crSplitFromLFAcrossChunks() {
        let chunks = ["a\r", "\nb\r\r\n", "c\r", "d\r"].map { Array($0.utf8) }
        #expect(Self.convert(chunks) == Array("a\nb\r\nc\rd\r".utf8))
        #expect(Self.convert([Array("x\r".utf8), [], Array("\ny".utf8)]) == Array("x\ny".utf8))
    }

    /// Every string up to length 7 over {a, CR, LF}, split into two and into three at every position.
    @Test func exhaustiveSplits() {
        let alphabet: [UInt8] = [UInt8(ascii: "a"), UInt8(ascii: "\r"), UInt8(ascii: "\n")]
        var inputs: [[UInt8]] = [[]]
        var frontier: [[UInt8]] = [[]]
        for _ in 1...7 {
            frontier = frontier.flatMap { prefix in alphabet.map { prefix + [$0] } }
            inputs += frontier
        }
        for input in inputs {
            let expected = Self.reference(input)
            for i in 0...input.count {
                for j in i...input.count {
                    let chunks = [Array(input[0..<i]), Array(input[i..<j]), Array(input[j...])]
                    #expect(Self.convert(chunks) == expected, "input \(input) split at \(i), \(j)")
                }
            }
        }
    }
}

@Suite struct MaildirDestinationTests {
    func setUp(anonymousFiles: Bool = true) throws -> (TemporaryDirectory, UIDLJournal, MaildirDestination) {
        let dir = try TemporaryDirectory()
        try FileSystem.makeDirectories(dir.file("state"))
        let journal = try UIDLJournal.open(testKey, stateDirectory: dir.file("state"))
        let maildir = MaildirDestination(path: dir.file("Mail/inbox"), accountKey: testKey, hostname: "host:a/b")
        maildir.allowsAnonymousFiles = anonymousFiles
        try maildir.recover(journal: journal)
        return (dir, journal, maildir)
    }

    @Test func deliveryWritesLFFileInNew() throws {
        let (dir, journal, maildir) = try setUp()
        try journal.noteSeen(["uid1"], now: 1)
        try deliver(["Subject: hi\r", "\n\r\nbody line\r\n", "last\r\n"], uid: "uid1", to: maildir, journal: journal)

        let new = try (FileSystem.entries(in: dir.file("Mail/inbox/new")) ?? [])
        #expect(new.count == 1)
        let name = try #require(new.first)
        let expected = "Subject: hi\n\nbody line\nlast\n"
        #expect(try contents(dir.file("Mail/inbox/new/\(name)")) == expected)
        #expect(name.contains(".P\(maildir.digest(of: "uid1")).host\\072a\\057b,S=\(expected.utf8.count)"))
        #expect(try (FileSystem.entries(in: dir.file("Mail/inbox/tmp")) ?? []).isEmpty)
        #expect(try (FileSystem.entries(in: dir.file("Mail/inbox/cur")) ?? []).isEmpty)
        for sub in ["", "/new", "/cur", "/tmp"] {
            var st = stat()
            #expect(stat(dir.file("Mail/inbox") + sub, &st) == 0 && st.st_mode & 0o777 == 0o700)
        }
        #expect(maildir.isStored(uid: "uid1"))
        #expect(throws: MailRetrieverError.alreadyStored(uid: "uid1")) { try maildir.begin(uid: "uid1") }
        #expect(journal.entry(for: "uid1")?.delivered == true)
    }

    @Test func digestDependsOnAccountAndUID() {
        let a = MaildirDestination(path: "/x", accountKey: testKey)
        let b = MaildirDestination(path: "/x", accountKey: AccountKey(user: "bob", host: "mail.example.com", port: 995))
        #expect(a.digest(of: "1") != a.digest(of: "2"))
        #expect(a.digest(of: "1") != b.digest(of: "1"))
        #expect(a.digest(of: "1").count == 16)
        #expect(MaildirDestination.embeddedDigest(in: "123.P0123456789abcdef.host,S=5:2,S") == "0123456789abcdef")
        #expect(MaildirDestination.embeddedDigest(in: "123.M5P1234.host") == nil)
    }

    /// kill -9 between the link into new/ and the journal write: the next run recognises the file.
    @Test func recoverFindsDeliveredButUnjournaledMessage() throws {
        let (dir, journal, maildir) = try setUp()
        try journal.noteSeen(["m1", "m2", "m3"], now: 1)
        for uid in ["m1", "m2"] {
            let sink = try maildir.begin(uid: uid)
            try sink.write(buffer("Subject: \(uid)\r\n\r\nx\r\n"))
            try sink.commit()
        }
        try maildir.flush()  // no markDelivered: the crash
        // The user's reader has meanwhile moved m2 to cur/ and flagged it.
        let m2 = try #require(
            try (FileSystem.entries(in: dir.file("Mail/inbox/new")) ?? []).first { $0.contains(maildir.digest(of: "m2")) })
        #expect(rename(dir.file("Mail/inbox/new/\(m2)"), dir.file("Mail/inbox/cur/\(m2):2,S")) == 0)

        let journal2 = try UIDLJournal.open(testKey, stateDirectory: dir.file("state"))
        #expect(journal2.entry(for: "m1")?.delivered == false)
        let maildir2 = MaildirDestination(path: dir.file("Mail/inbox"), accountKey: testKey, hostname: "h")
        try maildir2.recover(journal: journal2)
        #expect(journal2.entry(for: "m1")?.delivered == true)
        #expect(journal2.entry(for: "m2")?.delivered == true)
        #expect(journal2.entry(for: "m3")?.delivered == false)
        #expect(maildir2.isStored(uid: "m1") && maildir2.isStored(uid: "m2") && !maildir2.isStored(uid: "m3"))
        // A UID the journal never saw is still recognised through isStored.
        let sink = try maildir2.begin(uid: "m9")
        try sink.write(buffer("x\r\n"))
        try sink.commit()
        try maildir2.flush()
        let maildir3 = MaildirDestination(path: dir.file("Mail/inbox"), accountKey: testKey)
        try maildir3.recover(journal: journal2)
        #expect(maildir3.isStored(uid: "m9"))
    }

    /// Where the file system has O_TMPFILE (ext4, xfs, btrfs, tmpfs): a message being written has no name until
    /// it is complete and fsync'ed, so a crash mid-message leaves nothing, and a committed one appears in new/ only.
    @Test func unnamedFilesLeaveNothingUntilCommitted() throws {
        let (dir, journal, maildir) = try setUp()
        try #require(MaildirDestination.canNameAnonymousFiles(in: dir.file("Mail/inbox/tmp"), probeName: "probe"))
        let dropped = try maildir.begin(uid: "m1")
        try dropped.write(buffer("partial"))
        let sink = try maildir.begin(uid: "m2")
        try sink.write(buffer("Subject: m2\r\n\r\nbody\r\n"))
        #expect(try (FileSystem.entries(in: dir.file("Mail/inbox/tmp")) ?? []).isEmpty)
        #expect(try (FileSystem.entries(in: dir.file("Mail/inbox/new")) ?? []).isEmpty)
        try sink.commit()
        try maildir.flush()
        try journal.markDelivered("m2")
        let names = try (FileSystem.entries(in: dir.file("Mail/inbox/new")) ?? [])
        #expect(names.count == 1 && names[0].contains(maildir.digest(of: "m2")))
        #expect(try contents(dir.file("Mail/inbox/new/\(names[0])")) == "Subject: m2\n\nbody\n")
        withExtendedLifetime(dropped) {}
        #expect(try (FileSystem.entries(in: dir.file("Mail/inbox/tmp")) ?? []).isEmpty)
    }

    @Test func recoverRemovesOnlyOurStaleTmpFiles() throws {
        let (dir, journal, maildir) = try setUp(anonymousFiles: false)
        let sink = try maildir.begin(uid: "m1")
        try sink.write(buffer("partial"))
        // kill -9 here: the sink never commits nor aborts. Another program's tmp file sits beside ours.
        try writeFile(dir.file("Mail/inbox/tmp/1700000000.M1P2.otherhost"), "theirs")
        #expect(try (FileSystem.entries(in: dir.file("Mail/inbox/tmp")) ?? []).count == 2)
        let maildir2 = MaildirDestination(path: dir.file("Mail/inbox"), accountKey: testKey)
        try maildir2.recover(journal: journal)
        #expect(try (FileSystem.entries(in: dir.file("Mail/inbox/tmp")) ?? []) == ["1700000000.M1P2.otherhost"])
        #expect(!maildir2.isStored(uid: "m1"))
        withExtendedLifetime(sink) {}
    }

    @Test func abortRemovesPartialFile() throws {
        let (dir, _, maildir) = try setUp()
        let sink = try maildir.begin(uid: "m1")
        try sink.write(buffer("Subject: x\r\n"))
        sink.abort()
        #expect(try (FileSystem.entries(in: dir.file("Mail/inbox/tmp")) ?? []).isEmpty)
        #expect(try (FileSystem.entries(in: dir.file("Mail/inbox/new")) ?? []).isEmpty)
        #expect(throws: MailRetrieverError.sinkClosed) { try sink.write(buffer("more")) }
        #expect(!maildir.isStored(uid: "m1"))
    }

    /// Commits run their fsyncs on the pool, several at once; flush() returns when every one is named in new/.
    @Test(arguments: [true, false]) func manyCommitsAreAllDurableAfterFlush(anonymousFiles: Bool) throws {
        let (dir, journal, maildir) = try setUp(anonymousFiles: anonymousFiles)
        let uids = (0..<100).map { "u\($0)" }
        for uid in uids {
            let sink = try maildir.begin(uid: uid)
            try sink.write(buffer("Subject: \(uid)\r\n\r\nbody\r\n"))
            try sink.commit()
        }
        try maildir.flush()
        try journal.markDelivered(uids)
        let names = try (FileSystem.entries(in: dir.file("Mail/inbox/new")) ?? [])
        #expect(Set(names.compactMap(MaildirDestination.embeddedDigest)) == Set(uids.map(maildir.digest)))
        for name in names where name.contains(maildir.digest(of: "u42")) {
            #expect(try contents(dir.file("Mail/inbox/new/\(name)")) == "Subject: u42\n\nbody\n")
        }
        #expect(try (FileSystem.entries(in: dir.file("Mail/inbox/tmp")) ?? []).isEmpty)
    }

    /// A failed fsync (EIO, injected) surfaces in flush(), names nothing in new/, and keeps flush() failing, so
    /// the caller can never journal the message (and so never DELE it).
    @Test(arguments: [true, false]) func failedFsyncFailsFlushForTheRun(anonymousFiles: Bool) throws {
        let (dir, journal, maildir) = try setUp(anonymousFiles: anonymousFiles)
        try deliver(["Subject: ok\r\n\r\nfine\r\n"], uid: "ok", to: maildir, journal: journal)
        let root = dir.file("Mail/inbox")
        FaultInjection.shared.arm("fsync", under: root, errno: EIO)
        defer { FaultInjection.shared.disarm(under: root) }
        let sink = try maildir.begin(uid: "bad")
        try sink.write(buffer("Subject: bad\r\n\r\nlost?\r\n"))
        try sink.commit()
        #expect(throws: FileSystemError.self) { try maildir.flush() }
        FaultInjection.shared.disarm(under: root)
        #expect(throws: FileSystemError.self) { try maildir.flush() }
        let names = try (FileSystem.entries(in: dir.file("Mail/inbox/new")) ?? [])
        #expect(names.count == 1 && names[0].contains(maildir.digest(of: "ok")))
        #expect(try (FileSystem.entries(in: dir.file("Mail/inbox/tmp")) ?? []).isEmpty)
        #expect(journal.entry(for: "bad")?.delivered != true)
        // The next run stores it afresh.
        let maildir2 = MaildirDestination(path: root, accountKey: testKey)
        try maildir2.recover(journal: journal)
        #expect(!maildir2.isStored(uid: "bad"))
        try deliver(["Subject: bad\r\n\r\nagain\r\n"], uid: "bad", to: maildir2, journal: journal)
        #expect(journal.entry(for: "bad")?.delivered == true)
    }

    @Test func beginBeforeRecoverIsRefused() throws {
        let maildir = MaildirDestination(path: "/nonexistent/Mail", accountKey: testKey)
        #expect(throws: MailRetrieverError.notRecovered) { try maildir.begin(uid: "1") }
    }

    @Test func largeMessageStreams() throws {
        let (dir, journal, maildir) = try setUp()
        let line = String(repeating: "x", count: 998) + "\r\n"
        let sink = try maildir.begin(uid: "big")
        for _ in 0..<2000 { try sink.write(buffer(line)) }  // ~2 MB through a 64 KiB buffer
        try sink.commit()
        try maildir.flush()
        try journal.markDelivered("big")
        let name = try #require(try (FileSystem.entries(in: dir.file("Mail/inbox/new")) ?? []).first)
        #expect(name.hasSuffix(",S=\(2000 * 999)"))
    }
}
