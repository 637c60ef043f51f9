import Foundation
import Testing

@testable import MailRetriever

@Suite struct UIDLJournalTests {
    @Test func survivesReopen() throws {
        let dir = try TemporaryDirectory()
        do {
            let journal = try UIDLJournal.open(testKey, stateDirectory: dir.path)
            try journal.noteSeen(["a", "b", "c"], now: 1000)
            try journal.noteSeen(["b", "d"], now: 2000)  // b keeps its first sighting
            try journal.markDelivered("a")
        }
        let journal = try UIDLJournal.open(testKey, stateDirectory: dir.path)
        #expect(journal.entry(for: "a") == .init(uid: "a", firstSeen: 1000, delivered: true))
        #expect(journal.entry(for: "b") == .init(uid: "b", firstSeen: 1000, delivered: false))
        #expect(journal.entry(for: "d") == .init(uid: "d", firstSeen: 2000, delivered: false))
        #expect(journal.entry(for: "x") == nil)
        #expect(journal.path == dir.file("alice%40corp@mail.example.com_995.journal"))
    }

    /// Each record is on disk when the call returns: another reader (a process after kill -9) sees it without any
    /// close or compaction.
    @Test func markDeliveredIsDurableBeforeReturn() throws {
        let dir = try TemporaryDirectory()
        let journal = try UIDLJournal.open(testKey, stateDirectory: dir.path)
        try journal.noteSeen(["m1"], now: 5)
        try journal.markDelivered("m1")
        let other = try UIDLJournal.open(testKey, stateDirectory: dir.path)
        #expect(other.entry(for: "m1")?.delivered == true)
        withExtendedLifetime(journal) {}
    }

    @Test func tornLastLineIsIgnored() throws {
        let dir = try TemporaryDirectory()
        do {
            let journal = try UIDLJournal.open(testKey, stateDirectory: dir.path)
            try journal.noteSeen(["a", "b"], now: 10)
            try journal.markDelivered("a")
        }
        let path = dir.file(testKey.fileStem + ".journal")
        try appendFile(path, "D b")  // crash mid-append: no LF
        let journal = try UIDLJournal.open(testKey, stateDirectory: dir.path)
        #expect(journal.entry(for: "a")?.delivered == true)
        #expect(journal.entry(for: "b")?.delivered == false)
        // Opening compacted the torn line away, so the next append starts on a line of its own.
        #expect(try contents(path).hasSuffix("\n"))
        try journal.markDelivered("b")
        let again = try UIDLJournal.open(testKey, stateDirectory: dir.path)
        #expect(again.entry(for: "b")?.delivered == true)
    }

    @Test func malformedLinesAreSkipped() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file(testKey.fileStem + ".journal")
        try writeFile(path, "pop3-uidl-journal 1\nS 7 good\n\0\0\0\nS x bad\nZ what\nD good\n")
        let journal = try UIDLJournal.open(testKey, stateDirectory: dir.path)
        #expect(journal.entry(for: "good") == .init(uid: "good", firstSeen: 7, delivered: true))
        #expect(journal.allEntries.count == 1)
    }

    @Test func foreignFileIsNotClobbered() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file(testKey.fileStem + ".journal")
        try writeFile(path, "something else\n")
        #expect(throws: MailRetrieverError.self) { try UIDLJournal.open(testKey, stateDirectory: dir.path) }
        #expect(try contents(path) == "something else\n")
    }

    @Test func forgetDropsVanishedMessages() throws {
        let dir = try TemporaryDirectory()
        let journal = try UIDLJournal.open(testKey, stateDirectory: dir.path)
        try journal.noteSeen(["a", "b", "c"], now: 1)
        try journal.markDelivered("b")
        try journal.forget(keepingOnly: ["b", "c"])
        #expect(journal.entry(for: "a") == nil)
        let again = try UIDLJournal.open(testKey, stateDirectory: dir.path)
        #expect(Set(again.allEntries.map(\.uid)) == ["b", "c"])
        #expect(again.entry(for: "b")?.delivered == true)
    }

    @Test func pendingAppendRoundTripsAndIsClearedByDelivery() throws {
        let dir = try TemporaryDirectory()
        let pending = PendingAppend(uid: "u 1%", offset: 42, length: 100, sha256: String(repeating: "ab", count: 32))
        do {
            let journal = try UIDLJournal.open(testKey, stateDirectory: dir.path)
            try journal.setPending(pending)
        }
        let journal = try UIDLJournal.open(testKey, stateDirectory: dir.path)
        #expect(journal.pending == pending)
        try journal.markDelivered("u 1%")
        #expect(journal.pending == nil)
        let again = try UIDLJournal.open(testKey, stateDirectory: dir.path)
        #expect(again.pending == nil)
        #expect(again.entry(for: "u 1%")?.delivered == true)
    }

    @Test(arguments: ["plain", "", "with space", "per%cent", "tab\there", "ünï"])
    func uidEncodingRoundTrips(uid: String) {
        #expect(UIDLJournal.decode(UIDLJournal.encode(uid)) == uid)
        #expect(!UIDLJournal.encode(uid).contains(" "))
    }
}

@Suite struct AccountKeyTests {
    @Test func fileStemIsSafe() {
        #expect(AccountKey(user: "alice", host: "mail.example.com", port: 995).fileStem == "alice@mail.example.com_995")
        #expect(AccountKey(user: "a@b/c", host: "H", port: 110).fileStem == "a%40b%2Fc@h_110")
        #expect(AccountKey(user: "..", host: "x", port: 1).fileStem == "%2E.@x_1")
        let long = AccountKey(user: String(repeating: "u", count: 300), host: "h", port: 1).fileStem
        #expect(long.utf8.count < 200)
    }

    @Test func stateDirectoryFollowsXDG() throws {
        let dir = try TemporaryDirectory()
        let state = try StatePaths.directory(environment: ["XDG_STATE_HOME": dir.file("state"), "HOME": "/nonexistent"])
        #expect(state == dir.file("state/pop3"))
        let home = try StatePaths.directory(environment: ["HOME": dir.path])
        #expect(home == dir.file(".local/state/pop3"))
        var st = stat()
        #expect(stat(home, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o700)
    }
}

@Suite struct AccountLockTests {
    @Test func secondAcquireIsBusyUntilReleased() throws {
        let dir = try TemporaryDirectory()
        let first = try AccountLock.acquire(testKey, stateDirectory: dir.path)
        #expect(throws: AccountLockError.busy) { try AccountLock.acquire(testKey, stateDirectory: dir.path) }
        // Another account is independent.
        let other = try AccountLock.acquire(AccountKey(user: "bob", host: "h", port: 995), stateDirectory: dir.path)
        first.release()
        // A test running in parallel that forks (MDA tests) shares our descriptor between its fork and exec, which
        // keeps the flock a moment longer: retry for up to 5 s (a lock that is never released still fails).
        var again: AccountLock?
        for _ in 0..<500 where again == nil {
            again = try? AccountLock.acquire(testKey, stateDirectory: dir.path)
            if again == nil { usleep(10_000) }
        }
        #expect(again != nil)
        withExtendedLifetime((other, again)) {}
    }

    @Test func anotherProcessSeesTheLock() throws {
        let dir = try TemporaryDirectory()
        let lock = try AccountLock.acquire(testKey, stateDirectory: dir.path)
        let path = dir.file(testKey.fileStem + ".lock")
        // flock(1) from util-linux: exit 1 when the lock is held (-n), 0 once it is free.
        let held = try Subprocess.runShell(
            "flock -n '\(path)' true; echo $?", standardInput: nil, capture: .standardOutput)
        #expect(held.firstLine == "1")
        lock.release()
        let free = try Subprocess.runShell(
            "flock -n '\(path)' true; echo $?", standardInput: nil, capture: .standardOutput)
        #expect(free.firstLine == "0")
    }
}

@Suite struct RetentionPolicyTests {
    let day: Int64 = 86_400

    @Test func onlyDeliveredEntriesAreDeletable() {
        let undelivered = UIDLJournal.Entry(uid: "a", firstSeen: 0, delivered: false)
        for policy in [RetentionPolicy.deleteAfterDownload, .keep, .keepDays(0)] {
            #expect(!shouldDelete(entry: undelivered, now: 10 * day, policy: policy))
        }
    }

    @Test func keepDaysCountsFromFirstSeen() {
        let entry = UIDLJournal.Entry(uid: "a", firstSeen: 1000, delivered: true)
        #expect(shouldDelete(entry: entry, now: 1000, policy: .deleteAfterDownload))
        #expect(!shouldDelete(entry: entry, now: 1000 + 100 * day, policy: .keep))
        #expect(!shouldDelete(entry: entry, now: 1000 + 3 * day - 1, policy: .keepDays(3)))
        #expect(shouldDelete(entry: entry, now: 1000 + 3 * day, policy: .keepDays(3)))
        #expect(shouldDelete(entry: entry, now: 1000, policy: .keepDays(0)))
    }

    @Test func keepDaysWinsOverKeep() {
        #expect(RetentionPolicy(keep: true, keepDays: 7) == .keepDays(7))
        #expect(RetentionPolicy(keep: true, keepDays: nil) == .keep)
        #expect(RetentionPolicy(keep: false, keepDays: nil) == .deleteAfterDownload)
    }

    @Test func clockCanBeMovedByEnvironment() {
        #expect(currentTime(environment: ["POP3_NOW": "1234567890"]) == 1_234_567_890)
        #expect(abs(currentTime(environment: [:]) - Int64(Date().timeIntervalSince1970)) < 5)
    }
}
