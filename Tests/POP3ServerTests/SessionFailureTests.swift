import MailStore
import POP3Core
import Testing

@testable import POP3Server

/// The one failure model of a server session: each failure has one reply, one log level and one label from a fixed
/// set, whatever text it carries.
@Suite struct SessionFailureTests {
    static let all: [SessionFailure] = [
        .credentialsRejected(reason: "wrong password or unknown user"), .loginDelay, .maildropInUse,
        .credentialStoreFailed("EIO"), .mechanismUnavailable("X"), .noMaildir("no home"), .maildropPermanent("denied"),
        .maildropTemporary("worker gone"), .messageUnavailable("gone"), .commitFailed("EIO"), .retrievalLogFailed("EIO"),
    ]

    @Test func labelsAreBoundedAndDistinct() {
        let labels = Self.all.map(\.label)
        #expect(Set(labels).count == labels.count)
        #expect(Set(labels) == Set(SessionFailure.Label.allCases))
        // The text never reaches the label.
        #expect(SessionFailure.credentialsRejected(reason: "anything \u{1B}[31m").label == .authFailed)
    }

    @Test func loginRepliesFollowRFC3206() {
        #expect(SessionFailure.credentialsRejected(reason: "").loginFailure == .invalidCredentials)
        #expect(SessionFailure.maildropInUse.loginFailure == .maildropInUse)
        #expect(SessionFailure.loginDelay.loginFailure == .loginDelay)
        #expect(SessionFailure.credentialStoreFailed("").loginFailure == .temporary)
        #expect(SessionFailure.maildropTemporary("").loginFailure == .temporary)
        #expect(SessionFailure.maildropPermanent("").loginFailure == .permanent)
        #expect(SessionFailure.noMaildir("").loginFailure == .permanent)
        #expect(SessionFailure.commitFailed("").loginFailure == nil)
        #expect(SessionFailure.messageUnavailableReply == .err("Message is no longer available.", code: .sysTemp))
    }

    @Test func storeErrorsMapToFailures() {
        #expect(SessionFailure(opening: MaildropError.inUse) == .maildropInUse)
        #expect(SessionFailure(opening: MaildropError.permanent("p")) == .maildropPermanent("p"))
        #expect(SessionFailure(opening: MaildropError.temporary("t")) == .maildropTemporary("t"))
        #expect(SessionFailure(opening: MaildropError.messageGone).label == .maildropTemporary)
    }

    @Test func clientCausedFailuresAreNoticesServerTroubleIsLouder() {
        for failure in Self.all {
            switch failure.label {
            case .authFailed, .loginDelay, .inUse: #expect(failure.logLevel == .notice)
            default: #expect(failure.logLevel >= .warning)
            }
        }
    }
}
