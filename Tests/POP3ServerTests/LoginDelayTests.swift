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
