import Foundation
import Testing

@testable import MailRetriever

/// The daemon's schedule with an injected clock: intervals, doubling back-off up to an hour, reset on success,
/// SIGUSR1, and accounts that never wait for each other.
@Suite struct FetchDaemonTests {
    let t0 = ContinuousClock.now

    @Test func everyAccountIsDueAtOnceThenOnItsInterval() {
        var schedule = FetchSchedule(intervals: [.seconds(60), .seconds(300)], now: t0)
        #expect(schedule.due(now: t0) == [0, 1])
        schedule.started(0)
        schedule.started(1)
        #expect(schedule.due(now: t0 + .seconds(1)).isEmpty)  // running accounts are never due twice
        #expect(schedule.nextDue == nil)
        #expect(schedule.finished(0, success: true, now: t0 + .seconds(2)) == .seconds(60))
        #expect(schedule.finished(1, success: true, now: t0 + .seconds(3)) == .seconds(300))
        #expect(schedule.due(now: t0 + .seconds(61)).isEmpty)
        #expect(schedule.due(now: t0 + .seconds(62)) == [0])
        #expect(schedule.nextDue == t0 + .seconds(62))
    }

    @Test func failuresDoubleTheWaitUpToAnHourAndSuccessResetsIt() {
        var schedule = FetchSchedule(intervals: [.seconds(60), .seconds(60)], now: t0)
        var now = t0
        var waits: [Duration] = []
        for _ in 0..<8 {
            schedule.started(0)
            waits.append(schedule.finished(0, success: false, now: now))
            now = now + .seconds(1)
        }
        #expect(waits == [.seconds(120), .seconds(240), .seconds(480), .seconds(960), .seconds(1920), .seconds(3600), .seconds(3600), .seconds(3600)])
        // The other account is not held back by the failing one.
        #expect(schedule.due(now: now) == [1])
        schedule.started(0)
        #expect(schedule.finished(0, success: true, now: now) == .seconds(60))
        #expect(schedule.entries[0].failures == 0)
        #expect(FetchSchedule.wait(interval: .seconds(7200), failures: 3) == .seconds(7200))  // never below the interval
    }

    @Test func pollAllMakesIdleAccountsDueNowButNotRunningOnes() {
        var schedule = FetchSchedule(intervals: [.seconds(3600), .seconds(3600)], now: t0)
        schedule.started(0)
        schedule.started(1)
        schedule.finished(0, success: false, now: t0)
        schedule.pollAll(now: t0 + .seconds(5))
        #expect(schedule.due(now: t0 + .seconds(5)) == [0])
    }

    @Test func oneLinePerPollThatDidSomething() {
        var summary = FetchSummary(account: "work")
        #expect(FetchDaemon.line(summary, nextIn: .seconds(60)) == nil)
        summary.fetched = 2
        summary.deleted = 1
        #expect(FetchDaemon.line(summary, nextIn: .seconds(60)) == "pop3: work: 2 fetched, 1 deleted, 0 skipped")
        summary.error = "connection refused"
        #expect(FetchDaemon.line(summary, nextIn: .seconds(120)) == "pop3: work: connection refused (next try in 120 s)")
    }

    @Test func accountsFileIntervals() throws {
        let yaml = """
            daemon:
              interval: 600
            accounts:
              a:
                url: pop3s://u@h
                maildir: /tmp/a
                interval: 60
              b:
                url: pop3s://u@h
                maildir: /tmp/b
            """
        let accounts = try AccountsFile.parse(yaml: yaml, path: "t.yaml")
        #expect(accounts.map(\.interval) == [60, nil])
        #expect(try AccountsFile.daemonInterval(yaml: yaml, path: "t.yaml") == 600)
        for bad in ["daemon:\n  interval: 5\naccounts:\n  a:\n    url: pop3s://u@h\n    maildir: /x\n",
                    "daemon:\n  intervall: 60\naccounts:\n  a:\n    url: pop3s://u@h\n    maildir: /x\n",
                    "accounts:\n  a:\n    url: pop3s://u@h\n    maildir: /x\n    interval: 100000\n"] {
            #expect(throws: AccountsFileError.self) { try AccountsFile.parse(yaml: bad, path: "t.yaml") }
        }
    }
}

@Suite struct MTADestinationTests {
    @Test func dataIsCRLFAndDotStuffedWithOneTerminator() {
        var writer = MTADataWriter()
        var out = writer.encode(Array("a\n.b\r\n..c\nlone\rcr".utf8)[...])
        out += writer.finish()
        #expect(String(decoding: out, as: UTF8.self) == "a\r\n..b\r\n...c\r\nlone\rcr\r\n.\r\n")
        var split = MTADataWriter()
        var parts = split.encode(Array("x\r".utf8)[...])
        parts += split.encode(Array("\n.y\r\n".utf8)[...])
        parts += split.finish()
        #expect(String(decoding: parts, as: UTF8.self) == "x\r\n..y\r\n.\r\n")
    }

    @Test func targetsAreLoopbackOrUnixSockets() throws {
        #expect(try MTATarget.parse(kind: .lmtp, "unix:/run/dovecot/lmtp", recipient: "alice").get().address == .unix("/run/dovecot/lmtp"))
        #expect(try MTATarget.parse(kind: .smtp, "localhost:25", recipient: "alice").get().address == .tcp(host: "127.0.0.1", port: 25))
        #expect(try MTATarget.parse(kind: .lmtp, "[::1]:24", recipient: "a@b").get().address == .tcp(host: "::1", port: 24))
        for (kind, text, recipient) in [(MTATarget.Kind.smtp, "unix:/x", "a"), (.smtp, "192.0.2.1:25", "a"), (.lmtp, "127.0.0.1:0", "a"),
                                         (.lmtp, "unix:relative", "a"), (.smtp, "127.0.0.1:25", "a>b"), (.smtp, "127.0.0.1:25", "")] {
            #expect(throws: FetchSetupError.self) { try MTATarget.parse(kind: kind, text, recipient: recipient).get() }
        }
    }
}
