import POP3Client
import POP3Core
import SystemIO
import Testing

@testable import MailRetriever

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Every error a fetch can meet maps to one kind, a message and whether a later run may succeed.
@Suite struct FetchFailureTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let error: any Error & Sendable
        let kind: FetchFailure.Kind
        let temporary: Bool
        var testDescription: String { "\(self.error) → \(self.kind.rawValue)" }
    }

    static let cases: [Case] = [
        Case(error: POP3ClientError.connectionFailed("mail.example:995: refused"), kind: .connection, temporary: true),
        Case(error: POP3ClientError.timeout, kind: .connection, temporary: true),
        Case(error: POP3ClientError.connectionClosed, kind: .connection, temporary: true),
        Case(error: POP3ClientError.tlsFailed("certificate not trusted"), kind: .tls, temporary: false),
        Case(error: POP3ClientError.stlsRefused("no"), kind: .tls, temporary: false),
        Case(error: POP3ClientError.stlsNotOffered, kind: .tls, temporary: false),
        Case(error: POP3ClientError.stlsResponseInjection, kind: .tls, temporary: false),
        Case(error: POP3ClientError.alpnMismatch("http/1.1"), kind: .tls, temporary: false),
        Case(error: POP3ClientError.authenticationFailed(code: .auth, text: "bad"), kind: .authentication, temporary: false),
        Case(error: POP3ClientError.authenticationFailed(code: nil, text: "bad"), kind: .authentication, temporary: false),
        Case(error: POP3ClientError.authenticationFailed(code: .inUse, text: "locked"), kind: .serverBusy, temporary: true),
        Case(error: POP3ClientError.authenticationFailed(code: .loginDelay, text: "wait"), kind: .serverBusy, temporary: true),
        Case(error: POP3ClientError.authenticationFailed(code: .sysTemp, text: "db down"), kind: .serverTemporary, temporary: true),
        Case(error: POP3ClientError.authenticationFailed(code: .sysPerm, text: "closed"), kind: .serverRefused, temporary: false),
        Case(error: POP3ClientError.commandFailed(command: "RETR", code: nil, text: "gone"), kind: .serverRefused, temporary: false),
        Case(error: POP3ClientError.commandFailed(command: "RETR", code: .sysTemp, text: "io"), kind: .serverTemporary, temporary: true),
        Case(error: POP3ClientError.noUsableMechanism, kind: .authentication, temporary: false),
        Case(error: POP3ClientError.mechanismNotOffered("XOAUTH2"), kind: .authentication, temporary: false),
        Case(error: POP3ClientError.protocolViolation("malformed LIST line"), kind: .protocolViolation, temporary: false),
        Case(error: POP3ClientError.serverAuthenticationFailed("bad signature"), kind: .protocolViolation, temporary: false),
        Case(error: AccountLockError.busy, kind: .accountBusy, temporary: true),
        Case(error: FileSystemError("write", path: "/m/new/x", errno: ENOSPC), kind: .localStorage, temporary: true),
        Case(error: FileSystemError("open", path: "/m/new", errno: EACCES), kind: .localStorage, temporary: false),
        Case(error: MailRetrieverError.mboxLockTimeout(path: "/var/mail/a"), kind: .localStorage, temporary: true),
        Case(error: MailRetrieverError.mdaFailed(command: "procmail", exitStatus: 75, signal: nil, stderr: ""), kind: .localStorage, temporary: true),
        Case(error: MailRetrieverError.journalUnreadable(path: "/j", reason: "header"), kind: .localStorage, temporary: false),
        Case(error: PasswordError.fileMissing(path: "/p"), kind: .credentials, temporary: false),
        Case(error: OAuth2Error.http("connection refused"), kind: .credentials, temporary: true),
        Case(error: OAuth2Error.refreshRefused(account: "outlook", reason: "invalid_grant"), kind: .credentials, temporary: false),
        Case(error: OAuth2Error.notLoggedIn(account: "outlook"), kind: .credentials, temporary: false),
        Case(error: FetchSetupError("give exactly one destination"), kind: .configuration, temporary: false),
        Case(error: AccountsFileError(path: "a.yaml", key: "kep", reason: "unknown key"), kind: .configuration, temporary: false),
        Case(error: DeadlineExceeded(duration: .seconds(10)), kind: .connection, temporary: true),
    ]

    @Test(arguments: cases)
    func classifies(_ entry: Case) {
        let failure = FetchFailure(entry.error)
        #expect(failure.kind == entry.kind)
        #expect(failure.isTemporary == entry.temporary)
        #expect(failure.message == "\(entry.error)", "the user reads the error's own words")
    }

    @Test func anUnknownErrorIsOtherAndKeepsItsText() {
        struct Surprise: Error, CustomStringConvertible { var description: String { "surprise" } }
        let failure = FetchFailure(Surprise())
        #expect(failure.kind == .other && !failure.isTemporary && failure.message == "surprise")
    }

    @Test func aFailureMapsToItself() {
        let failure = FetchFailure(kind: .tls, message: "m", isTemporary: false)
        #expect(FetchFailure(failure) == failure)
    }

    /// Labels are bounded (one per kind), short, and safe as a metric label value.
    @Test func labelsAreBoundedAndPlain() {
        let labels = FetchFailure.Kind.allCases.map(\.rawValue)
        #expect(Set(labels).count == labels.count)
        for label in labels { #expect(label.allSatisfy { $0.isLowercase || $0 == "_" }) }
    }
}
