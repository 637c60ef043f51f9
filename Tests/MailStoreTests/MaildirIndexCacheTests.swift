import Foundation
import Logging
import POP3Core
import SystemIO
import MailStoreTestSupport
import Testing

@testable import MailStore

/// The in-memory index cache: an unchanged maildrop is opened from it, and every kind of change is seen.
@Suite("Maildir index cache")
struct MaildirIndexCacheTests {
    /// A cache whose clock runs `ahead` seconds in front of the file system's, so that stamps count as settled.
    static func provider(capacity: Int = 1_000, ahead seconds: Int64 = 10) -> (MaildirProvider, MaildirIndexCache) {
        var logger = Logger(label: "MaildirIndexCacheTests")
        logger.logLevel = .critical
        let cache = MaildirIndexCache(capacity: capacity) { WallClock.now() + seconds * 1_000_000_000 }
        return (MaildirProvider(threadPool: .singleton, logger: logger, indexCache: cache), cache)
    }

    static func maildir(messages: Int) throws -> MaildirFixture {
        let fixture = try MaildirFixture()
        try fixture.createLayout()
        for number in 0..<messages {
            try fixture.write("new/\(1_700_000_000 + number).M\(number)P1.host,S=2,W=3", "x\n")
        }
        return fixture
    }

    func open(_ provider: MaildirProvider, _ fixture: MaildirFixture) async throws -> [MaildropMessage] {
        let maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        let messages = maildrop.messages
        await maildrop.release()
        return messages
    }

    @Test func unchangedMaildropIsServedFromTheCache() async throws {
        let fixture = try Self.maildir(messages: 3)
        defer { fixture.cleanUp() }
        let (provider, cache) = Self.provider()
        let first = try await self.open(provider, fixture)
        #expect(cache.hits == 0)
        let second = try await self.open(provider, fixture)
        #expect(cache.hits == 1)
        #expect(second == first)
        #expect(cache.heldMessages == 3 + 1)
    }

    @Test func deliveryAfterCachingIsSeen() async throws {
        let fixture = try Self.maildir(messages: 2)
        defer { fixture.cleanUp() }
        let (provider, cache) = Self.provider()
        _ = try await self.open(provider, fixture)
        _ = try MaildirDelivery.deliver(Array("new mail\n".utf8), toMaildir: fixture.path)
        let after = try await self.open(provider, fixture)
        #expect(after.count == 3)
        #expect(cache.hits == 0)
    }

    @Test func messageRemovedOrRenamedBehindOurBackIsSeen() async throws {
        let fixture = try Self.maildir(messages: 3)
        defer { fixture.cleanUp() }
        let (provider, cache) = Self.provider()
        _ = try await self.open(provider, fixture)
        try fixture.remove("new/1700000000.M0P1.host,S=2,W=3")
        #expect(try await self.open(provider, fixture).count == 2)
        try fixture.move("new/1700000001.M1P1.host,S=2,W=3", "cur/1700000001.M1P1.host,S=2,W=3:2,S")
        let moved = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        #expect(moved.messages.count == 2)
        #expect(try await moved.contentString(at: 0) == "x\n")
        await moved.release()
        #expect(cache.hits == 0)
    }

    @Test func uidListRewrittenByAnotherServerIsSeen() async throws {
        let fixture = try Self.maildir(messages: 1)
        defer { fixture.cleanUp() }
        let (provider, cache) = Self.provider()
        let before = try await self.open(provider, fixture)
        let list = try fixture.read("dovecot-uidlist")
        // Dovecot gives the message a POP3 UIDL of its own (a `P` extension), rewriting the file.
        try fixture.write("dovecot-uidlist", list.replacingOccurrences(of: "\n1 :", with: "\n1 Pmigrated-uidl :"))
        let after = try await self.open(provider, fixture)
        #expect(before.map(\.uniqueID) != ["migrated-uidl"])
        #expect(after.map(\.uniqueID) == ["migrated-uidl"])
        #expect(cache.hits == 0)
    }

    @Test func committedDeletionIsSeen() async throws {
        let fixture = try Self.maildir(messages: 3)
        defer { fixture.cleanUp() }
        let (provider, _) = Self.provider()
        _ = try await self.open(provider, fixture)
        let maildrop = try await provider.openMaildrop(user: "u", path: fixture.path, owner: nil)
        try await maildrop.commit(deleting: [0])
        #expect(try await self.open(provider, fixture).count == 2)
    }

    /// A directory changed within the last second may change again in the same timestamp tick: not cached. (The
    /// cache's clock runs a day behind here, so every stamp is fresh however slowly the test runs.)
    @Test func freshlyChangedMaildropIsNotCached() async throws {
        let fixture = try Self.maildir(messages: 2)
        defer { fixture.cleanUp() }
        let (provider, cache) = Self.provider(ahead: -86_400)
        _ = try await self.open(provider, fixture)
        _ = try await self.open(provider, fixture)
        #expect(cache.hits == 0)
        #expect(cache.heldMessages == 0)
    }

    @Test func capacityBoundsWhatIsHeldEvictingTheLeastRecentlyUsed() async throws {
        let fixtures = try (0..<4).map { _ in try Self.maildir(messages: 4) }
        defer { fixtures.forEach { $0.cleanUp() } }
        let (provider, cache) = Self.provider(capacity: 12)
        for fixture in fixtures {
            _ = try await self.open(provider, fixture)
            #expect(cache.heldMessages <= 12)
        }
        // The most recent one is still there; a maildrop larger than the whole cache is never held.
        _ = try await self.open(provider, fixtures[3])
        #expect(cache.hits == 1)
        let big = try Self.maildir(messages: 12)
        defer { big.cleanUp() }
        _ = try await self.open(provider, big)
        #expect(cache.heldMessages <= 12)
        _ = try await self.open(provider, big)
        #expect(cache.hits == 1)
    }

    @Test func turnedOffWithZeroCapacity() async throws {
        let provider = MaildirProvider(threadPool: .singleton, logger: Logger(label: "t"), indexCacheCapacity: 0)
        #expect(provider.indexCache == nil)
    }
}

@Suite("File stamps")
struct FileStampTests {
    static func stamp(modified: Int64, changed: Int64) -> FileStamp {
        var st = stat()
        st.st_mtim = timespec(tv_sec: Int(modified / 1_000_000_000), tv_nsec: Int(modified % 1_000_000_000))
        st.st_ctim = timespec(tv_sec: Int(changed / 1_000_000_000), tv_nsec: Int(changed % 1_000_000_000))
        return FileStamp(st)
    }

    /// Nanosecond file times: settled 50 ms after the later of mtime and ctime.
    @Test func fineTimesSettleAfterFiftyMilliseconds() {
        let t: Int64 = 1_700_000_000_123_456_789
        let stamp = Self.stamp(modified: t, changed: t + 1_000_000)
        #expect(!stamp.isSettled(observedAt: t + 1_000_000 + 50_000_000))
        #expect(stamp.isSettled(observedAt: t + 1_000_000 + 50_000_001))
    }

    /// Whole-second file times (no nanoseconds in either): a change within the same second would look the same.
    @Test func wholeSecondTimesSettleAfterASecond() {
        let t: Int64 = 1_700_000_000_000_000_000
        let stamp = Self.stamp(modified: t, changed: t)
        #expect(!stamp.isSettled(observedAt: t + 999_000_000))
        #expect(!stamp.isSettled(observedAt: t + 1_000_000_000))
        #expect(stamp.isSettled(observedAt: t + 1_000_000_001))
    }
}
