import MailStoreTestSupport
import Testing

@testable import MailStore

@Suite struct DeliveryOrderTests {
    @Test func uniqueNamesSortByTimeThenMicrosecondsThenCounterNumerically() {
        let names = [
            "1700000001.M5P1Q1.host",
            "1700000000.M100P7Q2.host,S=10",
            "1700000000.M99P7Q1.host",
            "1700000000.M100P7Q10.host",
            "1700000000.M100P7Q9.host",
        ]
        #expect(names.sorted(by: MaildirName.deliveryOrder) == [
            "1700000000.M99P7Q1.host",
            "1700000000.M100P7Q2.host,S=10",
            "1700000000.M100P7Q9.host",
            "1700000000.M100P7Q10.host",
            "1700000001.M5P1Q1.host",
        ])
    }

    @Test func namesWithoutTheUsualFieldsStillSort() {
        #expect(["b", "a", "10.x", "9.y"].sorted(by: MaildirName.deliveryOrder) == ["a", "b", "9.y", "10.x"])
    }
}

import Foundation

@Suite struct UIDListLockRecoveryTests {
    /// kill -9 during a commit leaves dovecot-uidlist.lock behind: a holder on this host whose process is gone
    /// must not block the next indexing (before: 10 s wait and -ERR [SYS/TEMP] for two minutes).
    @Test func lockOfADeadProcessIsBrokenAtOnce() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        try fixture.write("dovecot-uidlist.lock", "\(try deadProcessIdentifier()):\(hostName())\n")
        _ = try MaildirDelivery.deliver(Array("Subject: new\n\nx\n".utf8), toMaildir: fixture.path)
        let maildrop = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(maildrop.messages.count == 1)
        #expect(!FileManager.default.fileExists(atPath: fixture.path + "/dovecot-uidlist.lock"), "the stale lock is gone")
        await maildrop.release()
    }
}

@Suite struct TemporaryFileSweepTests {
    /// docs/security-cases.md 57: files abandoned in tmp/ by a killed delivery are removed after 36 hours, fresh ones stay.
    @Test func oldTemporaryFilesAreRemovedWhenNewMailIsIndexed() async throws {
        let fixture = try MaildirFixture()
        defer { fixture.cleanUp() }
        try fixture.createLayout()
        try fixture.write("tmp/old.partial", "half a mess")
        try fixture.write("tmp/fresh.partial", "being written")
        var times = [timespec(tv_sec: Int(Date().timeIntervalSince1970) - 40 * 3600, tv_nsec: 0), timespec()]
        times[1] = times[0]
        #expect(utimensat(AT_FDCWD, fixture.path + "/tmp/old.partial", &times, 0) == 0)
        _ = try MaildirDelivery.deliver(Array("Subject: new\n\nx\n".utf8), toMaildir: fixture.path)
        let maildrop = try await MaildirFixture.provider().openMaildrop(user: "u", path: fixture.path, owner: nil)
        await maildrop.release()
        #expect(!FileManager.default.fileExists(atPath: fixture.path + "/tmp/old.partial"))
        #expect(FileManager.default.fileExists(atPath: fixture.path + "/tmp/fresh.partial"))
    }
}
