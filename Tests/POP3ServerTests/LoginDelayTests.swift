import Foundation
import NIOConcurrencyHelpers
import Testing

@testable import POP3Server

@Suite struct LoginDelayTests {
    final class FakeClock: Sendable {
        let base = ContinuousClock.now
        let offset = NIOLockedValueBox<Duration>(.zero)
        var now: ContinuousClock.Instant { self.base + self.offset.withLockedValue { $0 } }
        func advance(_ by: Duration) { self.offset.withLockedValue { $0 += by } }
    }

    @Test func aSecondLoginWithinTheDelayIsRefusedThenAllowed() {
        let clock = FakeClock()
        let delay = LoginDelay(delay: .seconds(60), now: { clock.now })
        #expect(delay.mayLogIn("alice"))
        delay.recordLogin("alice")
        #expect(!delay.mayLogIn("alice"))
        #expect(delay.mayLogIn("bob"), "per user")
        clock.advance(.seconds(59))
        #expect(!delay.mayLogIn("alice"))
        clock.advance(.seconds(1))
        #expect(delay.mayLogIn("alice"))
    }

    @Test func zeroIsOffAndKeepsNothing() {
        let delay = LoginDelay(delay: .zero)
        delay.recordLogin("alice")
        #expect(delay.mayLogIn("alice"))
        #expect(delay.tracked == 0)
    }

    @Test func oldEntriesArePrunedWhenTheTableGrows() {
        let clock = FakeClock()
        let delay = LoginDelay(delay: .seconds(10), now: { clock.now })
        for n in 0..<LoginDelay.pruneThreshold { delay.recordLogin("u\(n)") }
        clock.advance(.seconds(11))
        delay.recordLogin("last")
        #expect(delay.tracked == 1)
    }
}

@Suite struct RetrievalLogTests {
    @Test func expiredAfterTheDaysCountedFromTheFirstRetrieval() {
        let day: Int64 = 86_400
        let now: Int64 = 1_800_000_000
        let log = ["old": now - 3 * day, "edge": now - 2 * day, "young": now - 2 * day + 1]
        #expect(RetrievalLog.expired(["new", "old", "edge", "young"], log: log, days: 2, now: now) == [1, 2])
        #expect(RetrievalLog.expired(["young"], log: log, days: 0, now: now) == [0], "EXPIRE 0: anything retrieved")
        #expect(RetrievalLog.expired(["never-retrieved"], log: log, days: 0, now: now).isEmpty)
    }

    @Test func updateKeepsTheFirstTimeAndDropsWhatIsGone() {
        let log: [String: Int64] = ["a": 100, "gone": 50]
        let updated = RetrievalLog.updated(log, retrieved: ["a", "b", "deleted"], remaining: ["a", "b"], now: 999)
        #expect(updated == ["a": 100, "b": 999])
    }

    @Test func savedAndLoadedDurably() throws {
        let folder = FileManager.default.temporaryDirectory.path + "/retrieval-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let log = RetrievalLog(stateFolder: folder)
        #expect(try log.load(user: "jörg") == [:])
        try log.save(["000000016553F100": 1_700_000_000, "x": 1], user: "jörg")
        #expect(try log.load(user: "jörg") == ["000000016553F100": 1_700_000_000, "x": 1])
        #expect(try log.load(user: "other") == [:])
    }

    @Test func perAccountOverridesAndTypos() {
        var policy = ServerPolicy()
        policy.expireDays = 30
        #expect(policy.expireDays(extraFields: []) == (30, nil))
        #expect(policy.expireDays(extraFields: ["expire_days=0"]) == (0, nil))
        #expect(policy.expireDays(extraFields: ["expire_days=never"]) == (nil, nil))
        #expect(policy.expireDays(extraFields: ["expire_days=soon"]) == (30, "expire_days=soon"))
    }
}
