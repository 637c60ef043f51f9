import Testing

@testable import POP3Server

@Suite struct HeapTrimPolicyTests {
    /// A trim after the connections fell to half the peak and by at least the minimum, and one follow-up at the
    /// next check if no more are open by then; the peak then starts again from there, so the fall from 1,400 to
    /// 200 trims once more (with its follow-up at 100), and 100 → 0 (fewer than 256) does not.
    @Test func trimsAfterLargeDrops() {
        var policy = HeapTrimPolicy(minimumDrop: 256)
        let observed = [0, 500, 3000, 3000, 2000, 1600, 1500, 1400, 1400, 200, 100, 0]
        let trims = observed.map { policy.observe(open: $0) }
        #expect(trims == [false, false, false, false, false, false, true, true, false, true, true, false])
        #expect(policy.peak == 100)
    }

    /// No follow-up when the connections came back meanwhile.
    @Test func noFollowUpWhenLoadReturns() {
        var policy = HeapTrimPolicy(minimumDrop: 256)
        let trims = [3000, 1000, 1200, 1100].map { policy.observe(open: $0) }
        #expect(trims == [false, true, false, false])
    }

    /// Small servers (fewer connections than the minimum drop) never pay for a trim.
    @Test func smallSwingsNeverTrim() {
        var policy = HeapTrimPolicy(minimumDrop: 256)
        for open in [0, 100, 200, 0, 255, 0, 10, 0] {
            let trims = policy.observe(open: open)
            #expect(!trims)
        }
    }

    /// The RSS the trim logs is this process's, in MiB (it was once 0 by operator precedence).
    @Test func residentSizeIsPlausible() {
        #if os(Linux)
            let mib = HeapTrimmer.residentMiB()
            #expect(mib > 1 && mib < 65536)
        #endif
    }
}
