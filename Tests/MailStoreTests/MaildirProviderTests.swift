import Foundation
import NIOCore
import NIOPosix
import POP3Core
import Synchronization
import SystemIO
import MailStoreTestSupport
import Testing

@testable import MailStore

@Suite("Maildir provider")
struct MaildirProviderTests {
    static let validity: UInt32 = 1_700_000_000  // 0x6553F100

    /// A Maildir as Dovecot leaves it: a v3 uidlist with sizes in names or W extensions, one P override.
    func dovecotMaildir() throws -> MaildirFixture {
        let fixture = try MaildirFixture()
        try fixture.createLayout()
        try fixture.write(
            "dovecot-uidlist",
            """
            3 V1700000000 N9 G0123456789abcdef0123456789abcdef
            4 :1700000001.M1P10.mail,S=10,W=12
            7 W20 :1700000002.M2P10.mail
            8 P0000abcd W5 :1700000003.M3P10.mail

            """
        )
        try fixture.write("new/1700000001.M1P10.mail,S=10,W=12", "0123456\n8\n")
        try fixture.write("cur/1700000002.M2P10.mail:2,S", "eighteen bytes\nxx\n")
        try fixture.write("cur/1700000003.M3P10.mail:2,", "five!")
        return fixture
    }

    @Test func uidlsFollowDovecotDefaultFormatAndPOverride() async throws {
        let fixture = try self.dovecotMaildir()
        defer { fixture.cleanUp() }
        let provider = MaildirFixture.provider()
        let maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(maildrop.messages == [
            MaildropMessage(uniqueID: "000000046553F100", size: 12),
            MaildropMessage(uniqueID: "000000076553F100", size: 20),
            MaildropMessage(uniqueID: "0000abcd", size: 5),
        ])
        #expect(provider.messageFilesReadForIndexing == 0, "sizes come from names and the uidlist")
        await maildrop.release()
        // Nothing needed changing, so the uidlist is as Dovecot wrote it.
        #expect(try fixture.read("dovecot-uidlist").hasPrefix("3 V1700000000 N9 G0123456789abcdef0123456789abcdef\n4 :"))
    }

    @Test func emptyPOverrideMeansBaseNameAndOrderExtensionSortsFirst() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        try fixture.write(
            "dovecot-uidlist",
            "3 V42 N4 G0123456789abcdef0123456789abcdef\n1 W1 :a,W=1\n2 P O1 :b,W=1\n3 O0 W1 :c\n"
        )
        for name in ["cur/a,W=1:2,", "new/b,W=1", "new/c"] { try fixture.write(name, "x") }
        let maildrop = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(maildrop.messages.map(\.uniqueID) == ["000000030000002A", "b,W=1", "000000010000002A"])
        await maildrop.release()
    }

    @Test func version1UIDListIsReadAndUpgradedKeepingUIDs() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        try fixture.write("dovecot-uidlist", "1 1000 12\n10 100.M1.h:2,S\n11 101.M2.h\n")
        try fixture.write("cur/100.M1.h:2,S", "a\n")
        try fixture.write("new/101.M2.h", "bb\n")
        let provider = MaildirFixture.provider()
        let maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(maildrop.messages == [
            MaildropMessage(uniqueID: "0000000A000003E8", size: 3),
            MaildropMessage(uniqueID: "0000000B000003E8", size: 4),
        ])
        await maildrop.release()
        let list = try fixture.read("dovecot-uidlist")
        #expect(list.hasPrefix("3 V1000 N12 G"))
        #expect(list.contains("\n10 W3 :100.M1.h\n11 W4 :101.M2.h\n"))
    }

    @Test func missingMaildirIsAnEmptyMaildropAndIsCreated() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        let maildrop = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path + "/", owner: nil)
        #expect(maildrop.messages.isEmpty)
        #expect(fixture.exists("pop3d.lock"))
        await maildrop.release()
        #expect(!fixture.exists("pop3d.lock"))
        for sub in ["new", "cur", "tmp"] {
            let attributes = try FileManager.default.attributesOfItem(atPath: fixture.path + "/" + sub)
            #expect((attributes[.posixPermissions] as? Int) == 0o700)
        }
        let header = try fixture.read("dovecot-uidlist")
        #expect(header.range(of: #"^3 V[0-9]+ N1 G[0-9a-f]{32}\n$"#, options: .regularExpression) != nil)
    }

    @Test func newFilesGetIncreasingNeverReusedUIDs() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        try fixture.write("dovecot-uidlist", "3 V7 N1 G0123456789abcdef0123456789abcdef\n")
        // Named so that name order and time order differ for the first two.
        try fixture.write("new/1700000010.M5P1.h", "second\n")
        try fixture.write("new/999999999.M9P1.h", "first\n")
        try fixture.write("cur/1700000020.M1P1.h:2,S", "third\n")
        let provider = MaildirFixture.provider()

        var maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(maildrop.messages.map(\.uniqueID) == ["0000000100000007", "0000000200000007", "0000000300000007"])
        #expect(try await maildrop.contentString(at: 0) == "first\n")
        await maildrop.release()

        // Reopen: same UIDLs, and no file is read again.
        let reads = provider.messageFilesReadForIndexing
        #expect(reads == 3)
        maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(maildrop.messages.map(\.uniqueID) == ["0000000100000007", "0000000200000007", "0000000300000007"])
        #expect(provider.messageFilesReadForIndexing == reads)
        // Delete the highest, then a new delivery must not get UID 3 again.
        try await maildrop.commit(deleting: [2])

        try MaildirDelivery.deliver(Array("fourth\n".utf8), toMaildir: fixture.path)
        maildrop = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(maildrop.messages.map(\.uniqueID) == ["0000000100000007", "0000000200000007", "0000000400000007"])
        await maildrop.release()
        #expect(try fixture.read("dovecot-uidlist").hasPrefix("3 V7 N5 G0123456789abcdef0123456789abcdef\n"))
    }

    @Test func sizesCountBareLineFeedsTwiceAndTrustNames() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        try fixture.write("new/1.lf", "a\nb\n")  // 4 octets, 6 on the wire
        try fixture.write("new/2.crlf", "a\r\nb\r\n")  // 6
        try fixture.write("new/3.mixed", "a\rb\r\nc\n")  // lone CR stays: 7 + 1
        try fixture.write("new/4.sized,S=4", "a\nb\n")  // S= is the physical size: still measured
        try fixture.write("new/5.vsized,S=3,W=99", "abc")  // W= is trusted as is
        let provider = MaildirFixture.provider()
        let maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(maildrop.messages.map(\.size) == [6, 6, 8, 6, 99])
        #expect(provider.messageFilesReadForIndexing == 4)
        await maildrop.release()
        let again = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(again.messages.map(\.size) == [6, 6, 8, 6, 99])
        #expect(provider.messageFilesReadForIndexing == 4, "indexed sizes are not measured again")
        await again.release()
    }

    @Test func contentChunksConcatenateToTheFile() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        let body = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }
        try fixture.write("cur/1.big:2,S", body)
        try fixture.write("new/2.empty", "")
        let maildrop = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        let (bytes, chunks) = try await maildrop.contentBytes(at: 0, chunkSize: 7)
        #expect(bytes == body)
        #expect(chunks == 143)
        let empty = try await maildrop.contentBytes(at: 1)
        #expect(empty.bytes.isEmpty && empty.chunks == 0)
        await maildrop.release()
    }

    @Test func secondOpenIsInUseUntilRelease() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        let provider = MaildirFixture.provider()
        let first = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        await #expect(throws: MaildropError.inUse) { _ = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil) }
        // Another provider instance (another spelling of the path) is refused by the lock file.
        await #expect(throws: MaildropError.inUse) {
            _ = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.root + "/./Maildir", owner: nil)
        }
        await first.release()
        await first.release()  // idempotent
        let second = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        await second.release()
    }

    @Test func staleLockOfDeadProcessIsRecovered() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        try fixture.write("pop3d.lock", "\(try deadProcessIdentifier()) \(hostName())\n")
        let maildrop = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(try fixture.read("pop3d.lock") == "\(getpid()) \(hostName())\n")
        await maildrop.release()
        #expect(!fixture.exists("pop3d.lock"))
    }

    @Test func lockOfLiveProcessOrOtherHostIsRespected() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        let provider = MaildirFixture.provider()
        // Our own pid, written now, while this process does not hold the maildrop: a live holder.
        try fixture.write("pop3d.lock", "\(getpid()) \(hostName())\n")
        await #expect(throws: MaildropError.inUse) { _ = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil) }
        // A pid we cannot check on another host.
        try fixture.write("pop3d.lock", "1 some-other-host.example\n")
        await #expect(throws: MaildropError.inUse) { _ = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil) }
        // A fresh, half-written lock.
        try fixture.write("pop3d.lock", "")
        await #expect(throws: MaildropError.inUse) { _ = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil) }
        #expect(fixture.exists("pop3d.lock"))
        try fixture.remove("pop3d.lock")
        let maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        await maildrop.release()
    }

    @Test func deliveryDuringSessionDoesNotChangeItsSnapshot() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try MaildirDelivery.deliver(Array("one\n".utf8), toMaildir: fixture.path)
        let provider = MaildirFixture.provider()
        let maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        try MaildirDelivery.deliver(Array("two\n".utf8), toMaildir: fixture.path)
        #expect(maildrop.messages.count == 1)
        try await maildrop.commit(deleting: [])
        let next = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(next.messages.count == 2)
        #expect(try await next.contentString(at: 1) == "two\n")
        await next.release()
    }

    @Test func commitDeletesExactlyTheChosenMessagesDurably() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        // In delivery order, which is the maildrop's order (a sorted listing is not: "M99…" sorts after "M100…").
        var names: [String] = []
        for number in 1...5 { names.append(try MaildirDelivery.deliver(Array("message \(number)\n".utf8), toMaildir: fixture.path)) }
        let provider = MaildirFixture.provider()
        let maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        let before = maildrop.messages
        #expect(before.count == 5)
        // One message had its flags changed and one moved new→cur meanwhile; both must still be deleted.
        try fixture.move("new/" + names[1], "cur/" + names[1] + ":2,S")
        try fixture.move("new/" + names[3], "cur/" + names[3] + ":2,")
        try await maildrop.commit(deleting: [1, 3, 4])
        #expect(try fixture.list("new") == [names[0], names[2]].sorted())
        #expect(try fixture.list("cur").isEmpty)
        #expect(!fixture.exists("pop3d.lock"))

        let reopened = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(reopened.messages == [before[0], before[2]])
        #expect(try await reopened.contentString(at: 1) == "message 3\n")
        await reopened.release()
        let list = try fixture.read("dovecot-uidlist")
        #expect(list.split(separator: "\n").count == 3)
        #expect(list.contains(" N6 "))
    }

    @Test func droppedSessionDeletesNothing() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        for number in 1...3 { try MaildirDelivery.deliver(Array("m\(number)\n".utf8), toMaildir: fixture.path) }
        let provider = MaildirFixture.provider()
        let maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        await maildrop.release()
        try await maildrop.commit(deleting: [0, 1, 2])  // after release: no-op
        #expect(try fixture.list("new").count == 3)
        let again = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(again.messages == maildrop.messages)
        await again.release()
    }

    @Test func renamedMessageIsFoundAndRemovedOneIsGone() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        let first = try MaildirDelivery.deliver(Array("first\n".utf8), toMaildir: fixture.path)
        let second = try MaildirDelivery.deliver(Array("second\n".utf8), toMaildir: fixture.path)
        let maildrop = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        try fixture.move("new/" + first, "cur/" + first + ":2,S")
        #expect(try await maildrop.contentString(at: 0) == "first\n")
        try fixture.move("cur/" + first + ":2,S", "cur/" + first + ":2,RS")
        #expect(try await maildrop.contentString(at: 0) == "first\n")
        try fixture.remove("new/" + second)
        await #expect(throws: MaildropError.messageGone) { _ = try await maildrop.content(ofMessageAt: 1, chunkSize: 10) }
        try await maildrop.commit(deleting: [1])  // already gone: not an error
        #expect(try fixture.list("cur") == [first + ":2,RS"])
    }

    @Test func corruptUIDListHeaderIsRecreated() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        try fixture.write("dovecot-uidlist", "garbage\n")
        try fixture.write("new/1.a", "x")
        let maildrop = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(maildrop.messages.count == 1)
        await maildrop.release()
        #expect(try fixture.read("dovecot-uidlist").hasPrefix("3 V"))
    }

    @Test func staleUIDListLockIsBrokenAndFreshOneWaitedFor() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        try fixture.write("new/1.a", "x")
        try fixture.write("dovecot-uidlist.lock", "1:elsewhere\n")
        let old = Date(timeIntervalSinceNow: -600)
        try FileManager.default.setAttributes([.modificationDate: old], ofItemAtPath: fixture.path + "/dovecot-uidlist.lock")
        let maildrop = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(maildrop.messages.count == 1)
        #expect(!fixture.exists("dovecot-uidlist.lock"))
        await maildrop.release()
    }

    /// A lock is published complete (written to a temporary file, then linked into place): a reader never sees it
    /// empty, so a process killed while taking it cannot leave an empty lock that blocks indexing until it ages out
    /// (faults.py round 9 once hit a 10 s `[SYS/TEMP]` that way). The temporary file is gone afterwards.
    @Test(arguments: [true, false])  // an unnamed file named by linkat, or a temporary name and link
    func locksAreNeverVisibleWithoutTheirOwner(unnamed: Bool) throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        let lockPath = fixture.path + "/dovecot-uidlist.lock"
        let contents = "\(getpid()):host\n"
        let done = Atomic<Bool>(false)
        let emptySightings = Atomic<Int>(0)
        let reader = Thread {
            while !done.load(ordering: .relaxed) {
                if let data = FileManager.default.contents(atPath: lockPath), data.count < contents.utf8.count {
                    emptySightings.add(1, ordering: .relaxed)
                }
            }
        }
        reader.start()
        for _ in 0..<3_000 {
            guard case .acquired(let lock) = try LockFile.tryCreate(lockPath, contents: contents, unnamed: unnamed) else {
                Issue.record("lock held by nobody")
                break
            }
            try lock.release()
        }
        done.store(true, ordering: .relaxed)
        while !reader.isFinished { usleep(1_000) }
        #expect(emptySightings.load(ordering: .relaxed) == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.path).filter { $0.hasSuffix(".tmp") }.isEmpty)
        // Held: a second attempt sees the owner, and does not replace the lock.
        guard case .acquired(let held) = try LockFile.tryCreate(lockPath, contents: contents, unnamed: unnamed) else {
            Issue.record("lock held by nobody")
            return
        }
        guard case .held(let bytes, _) = try LockFile.tryCreate(lockPath, contents: "other:host\n", unnamed: unnamed) else {
            Issue.record("a held lock was taken again")
            return
        }
        #expect(String(decoding: bytes, as: UTF8.self) == contents)
        try held.release()
        #expect(!fixture.exists("dovecot-uidlist.lock"))
    }

    /// Once indexed, opening reads no message file (sizes come from names and dovecot-uidlist). Speed itself is
    /// measured in benchmarks, not asserted here.
    @Test func manyMessagesReopenWithoutReadingMessageFiles() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        let count = 5_000
        for number in 0..<count {
            let name = "new/\(1_700_000_000 + number).M\(number)P1.host,S=2,W=3"
            FileManager.default.createFile(atPath: fixture.path + "/" + name, contents: Data("x\n".utf8))
        }
        let provider = MaildirFixture.provider()
        let first = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(first.messages.count == count)
        await first.release()
        let second = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(second.messages.count == count)
        #expect(second.messages.last?.uniqueID == String(format: "%08X", count) + second.messages[0].uniqueID.suffix(8))
        #expect(provider.messageFilesReadForIndexing == 0)
        await second.release()
    }

    /// A Maildir with messages "message 0" … "message 11" delivered in that order, and their file names.
    func twelveDeliveredMessages() throws -> (MaildirFixture, [String]) {
        let fixture = try MaildirFixture()
        var names: [String] = []
        for index in 0..<12 { names.append(try MaildirDelivery.deliver(Array("message \(index)\n".utf8), toMaildir: fixture.path)) }
        return (fixture, names)
    }

    /// docs/security-cases.md 46: a storage error on the 5th of 10 removals in UPDATE. The commit fails (the session answers
    /// QUIT with -ERR), "some or none" of the marked messages are gone and never an unmarked one, the lock is
    /// released, and once the fault clears the next session lists exactly what is left, under the same UIDLs.
    @Test func failedRemovalInUpdateRemovesSomeOrNoneAndReleases() async throws {
        let (fixture, names) = try self.twelveDeliveredMessages()
        defer { fixture.cleanUp() }
        let provider = MaildirFixture.provider()
        let maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        let uidls = maildrop.messages.map(\.uniqueID)
        #expect(uidls.count == 12)
        // The fault: the 5th marked message's name now holds a non-empty directory, so unlink fails (EISDIR).
        let blocked = "new/" + names[4]
        try fixture.remove(blocked)
        try fixture.write(blocked + "/keep", "x")
        await #expect(throws: MaildropError.self) { try await maildrop.commit(deleting: Set(0..<10)) }
        #expect(!fixture.exists("pop3d.lock"), "the lock is released after a failed commit")
        let left = Set(try fixture.list("new"))
        #expect(left.contains(names[10]) && left.contains(names[11]), "an unmarked message was removed")
        #expect(left.isSuperset(of: names[5..<10]), "removal goes in order and stops at the failure")
        // The fault clears (the file is back); the next session is consistent.
        try fixture.remove(blocked)
        try fixture.write(blocked, "message 4\n")
        let next = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        let remaining = Set(try fixture.list("new"))
        #expect(next.messages.count == remaining.count)
        #expect(Set(next.messages.map(\.uniqueID)) == Set(names.indices.filter { remaining.contains(names[$0]) }.map { uidls[$0] }))
        for index in next.messages.indices {
            #expect(try await next.contentString(at: index).hasPrefix("message "))
        }
        await next.release()
    }

    /// docs/security-cases.md 46 as written there: unlink fails with EIO (injected) on the 5th of 10 removals.
    @Test func injectedUnlinkErrorInUpdate() async throws {
        let (fixture, names) = try self.twelveDeliveredMessages()
        defer { fixture.cleanUp() }
        let provider = MaildirFixture.provider()
        let maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        FaultInjection.shared.arm("unlink", under: fixture.path + "/new/", errno: EIO, after: 4)
        await #expect(throws: MaildropError.self) { try await maildrop.commit(deleting: Set(0..<10)) }
        FaultInjection.shared.disarm(under: fixture.path + "/new/")
        #expect(!fixture.exists("pop3d.lock"))
        let left = Set(try fixture.list("new"))
        #expect(left == Set(names[4...]), "the first four went, the rest stayed")
        let next = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(next.messages.count == 8)
        await next.release()
    }
}
