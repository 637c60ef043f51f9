import NIOCore
import Testing

@testable import POP3Core

extension ServerSession {
    mutating func send(_ line: String) -> Action { self.receive(line: ByteBuffer(string: line)) }
}

func okText(_ action: ServerSession.Action) -> String? {
    if case .respond(let r) = action, r.isOK { return r.text }
    return nil
}

func errResponse(_ action: ServerSession.Action) -> StatusResponse? {
    if case .respond(let r) = action, !r.isOK { return r }
    return nil
}

@Suite struct ServerSessionTests {
    static let messages = [MaildropMessage(uniqueID: "uid-a", size: 120), MaildropMessage(uniqueID: "uid-b", size: 300)]

    func loggedIn(tls: Bool = true) -> ServerSession {
        var session = ServerSession(configuration: .init(), tlsActive: tls)
        _ = session.send("USER alice")
        #expect(session.send("PASS secret") == .login(user: "alice", password: "secret"))
        _ = session.loginSucceeded(messages: Self.messages)
        return session
    }

    @Test func userPassLogin() {
        let session = self.loggedIn()
        #expect(session.isAuthenticated)
        #expect(session.user == "alice")
    }

    @Test func statListUidl() {
        var session = self.loggedIn()
        #expect(okText(session.send("STAT")) == "2 420")
        #expect(okText(session.send("LIST 2")) == "2 300")
        #expect(okText(session.send("UIDL 1")) == "1 uid-a")
        #expect(errResponse(session.send("LIST 3"))?.text == "No such message.")
        var buffer = ByteBuffer()
        session.writeScanListing(.list, into: &buffer)
        #expect(String(buffer: buffer) == "1 120\r\n2 300\r\n.\r\n")
    }

    /// docs/security-cases.md 69: a maildrop over `maximumMessages` is shown as its first (oldest) messages only; numbers
    /// past the limit name no message, and QUIT commits indices of the shown ones.
    @Test func hugeMaildropIsListedUpToTheLimit() {
        var configuration = ServerSession.Configuration()
        configuration.maximumMessages = 3
        var session = ServerSession(configuration: configuration, tlsActive: true)
        _ = session.send("USER alice")
        _ = session.send("PASS secret")
        _ = session.loginSucceeded(messages: (1...5).map { MaildropMessage(uniqueID: "uid-\($0)", size: $0 * 10) })
        #expect(okText(session.send("STAT")) == "3 60")
        #expect(errResponse(session.send("LIST 4"))?.text == "No such message.")
        var buffer = ByteBuffer()
        session.writeScanListing(.uidl, into: &buffer)
        #expect(String(buffer: buffer) == "1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n.\r\n")
        #expect(okText(session.send("DELE 3")) != nil)
        #expect(session.send("QUIT") == .commit(deleting: [2]))
    }

    @Test func deleteIsOnlyCommittedByQuit() {
        var session = self.loggedIn()
        #expect(okText(session.send("DELE 1")) != nil)
        #expect(errResponse(session.send("DELE 1"))?.text == "Message is deleted.")
        #expect(errResponse(session.send("RETR 1"))?.text == "Message is deleted.")
        #expect(errResponse(session.send("LIST 1"))?.text == "Message is deleted.")
        #expect(okText(session.send("STAT")) == "1 300")
        var buffer = ByteBuffer()
        session.writeScanListing(.uidl, into: &buffer)
        #expect(String(buffer: buffer) == "2 uid-b\r\n.\r\n")
        #expect(okText(session.send("RSET")) != nil)
        #expect(okText(session.send("STAT")) == "2 420")
        _ = session.send("DELE 2")
        #expect(session.send("QUIT") == .commit(deleting: [1]))
        guard case .respondAndClose(let r) = session.updateFinished(success: true) else { Issue.record("no close"); return }
        #expect(r.isOK)
    }

    @Test func retrAndTop() {
        var session = self.loggedIn()
        #expect(session.send("RETR 2") == .sendMessage(.ok("300 octets"), index: 1, bodyLineLimit: nil))
        #expect(session.send("TOP 1 5") == .sendMessage(.ok("Top of message follows."), index: 0, bodyLineLimit: 5))
    }

    @Test func quitBeforeLoginClosesWithoutUpdate() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        #expect(session.send("QUIT") == .respondAndClose(.ok("Logging out.")))
    }

    @Test func passWithoutUser() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        #expect(errResponse(session.send("PASS x"))?.text == "No user name given; send USER first.")
    }

    @Test func cleartextAuthRefusedWithoutTLS() {
        var configuration = ServerSession.Configuration()
        configuration.stlsAvailable = true
        var session = ServerSession(configuration: configuration, tlsActive: false)
        #expect(errResponse(session.send("USER alice"))?.code == .auth)
        #expect(errResponse(session.send("AUTH PLAIN AGFsaWNlAHNlY3JldA=="))?.code == .auth)
        let caps = session.capabilities.map(\.description)
        #expect(caps.contains("STLS") && !caps.contains("USER") && !caps.contains("SASL PLAIN"))
    }

    @Test func capabilityListsPerState() {
        var configuration = ServerSession.Configuration()
        configuration.stlsAvailable = true
        var session = ServerSession(configuration: configuration, tlsActive: false)
        #expect(session.send("STLS") == .startTLS(.ok("Begin TLS negotiation now.")))
        session.tlsEstablished()
        let afterTLS = session.capabilities.map(\.description)
        #expect(afterTLS.contains("USER") && afterTLS.contains("SASL PLAIN") && !afterTLS.contains("STLS"))
        #expect(errResponse(session.send("STLS"))?.text == "TLS is already active.")
        _ = session.send("USER a")
        _ = session.send("PASS b")
        _ = session.loginSucceeded(messages: [])
        #expect(session.capabilities.map(\.description) == afterTLS)
        for required in ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION swift-pop3"] {
            #expect(afterTLS.contains(required))
        }
    }

    @Test func userBeforeSTLSIsForgotten() {
        var configuration = ServerSession.Configuration()
        configuration.stlsAvailable = true
        configuration.allowCleartextAuthentication = true
        var session = ServerSession(configuration: configuration, tlsActive: false)
        #expect(okText(session.send("USER victim")) != nil)
        _ = session.send("STLS")
        session.tlsEstablished()
        #expect(errResponse(session.send("PASS secret"))?.text == "No user name given; send USER first.")
    }

    @Test func saslPlain() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        #expect(session.send("AUTH PLAIN") == .saslContinuation([]))
        #expect(session.expectsSASLResponse)
        let response = SASLPlainCredentials(authenticationID: "alice", password: "pw").encodedResponse()
        #expect(session.send(response) == .login(user: "alice", password: "pw"))
        #expect(session.loginFailed(.invalidCredentials) == .respond(.err("Authentication failed.", code: .auth)))

        #expect(session.send("AUTH PLAIN") == .saslContinuation([]))
        #expect(session.send("*") == .respond(.err("Authentication cancelled.")))
        #expect(session.send("AUTH PLAIN \(response)") == .login(user: "alice", password: "pw"))
    }

    static func scramConfiguration() -> ServerSession.Configuration {
        var configuration = ServerSession.Configuration()
        configuration.saslMechanisms = ["PLAIN", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        return configuration
    }

    /// A driver-run mechanism: each client line becomes a step; challenges, success and failure come back.
    @Test func saslExchangeSteps() {
        var session = ServerSession(configuration: Self.scramConfiguration(), tlsActive: true)
        #expect(session.send("AUTH scram-sha-256") == .saslStep(mechanism: "SCRAM-SHA-256", response: nil, first: true))
        #expect(session.saslChallenge([]) == .saslContinuation([]))
        #expect(session.expectsSASLResponse)
        #expect(session.send(Base64.encode(Array("n,,n=u,r=x".utf8))) == .saslStep(mechanism: "SCRAM-SHA-256", response: Array("n,,n=u,r=x".utf8), first: false))
        #expect(session.saslChallenge([1, 2]) == .saslContinuation([1, 2]))
        // An empty line is an empty response (the answer to SCRAM's server-final challenge).
        #expect(session.send("") == .saslStep(mechanism: "SCRAM-SHA-256", response: [], first: false))
        session.saslAuthenticated(user: "u")
        #expect(session.user == "u")
        _ = session.loginSucceeded(messages: [])
        #expect(session.isAuthenticated)
    }

    @Test func saslExchangeFailureCountsAsWrongPassword() {
        var configuration = Self.scramConfiguration()
        configuration.maximumBadCommandsBeforeLogin = 2
        var session = ServerSession(configuration: configuration, tlsActive: true)
        #expect(session.send("AUTH SCRAM-SHA-256 \(Base64.encode(Array("n,,n=u,r=x".utf8)))") == .saslStep(mechanism: "SCRAM-SHA-256", response: Array("n,,n=u,r=x".utf8), first: true))
        #expect(session.saslFailed() == .respond(.err("Authentication failed.", code: .auth)))
        _ = session.send("AUTH SCRAM-SHA-256 =")
        #expect(session.saslFailed() == .respondAndClose(.err("Authentication failed.", code: .auth)))
    }

    @Test func saslExchangeCancelAndBadData() {
        var session = ServerSession(configuration: Self.scramConfiguration(), tlsActive: true)
        _ = session.send("AUTH SCRAM-SHA-256")
        _ = session.saslChallenge([])
        #expect(session.send("*") == .respond(.err("Authentication cancelled.")))
        #expect(!session.expectsSASLResponse)
        _ = session.send("AUTH SCRAM-SHA-256")
        _ = session.saslChallenge([])
        #expect(errResponse(session.send("%%%"))?.text == "Authentication failed: invalid base64 data.")
        #expect(errResponse(session.send("AUTH SCRAM-SHA-256 %%%"))?.text == "Authentication failed: invalid base64 data.")
        // A response over limits.sasl_line_length ends the exchange like PLAIN's.
        var long = ServerSession(configuration: Self.scramConfiguration(), tlsActive: true)
        _ = long.send("AUTH SCRAM-SHA-256")
        _ = long.saslChallenge([])
        #expect(long.maximumLineLength == long.configuration.maximumSASLLineLength)
        #expect(errResponse(long.receiveOverlongLine())?.text == "Authentication failed: response too long.")
        #expect(!long.expectsSASLResponse)
        var other = ServerSession(configuration: Self.scramConfiguration(), tlsActive: true)
        #expect(errResponse(other.send("AUTH CRAM-MD5"))?.text == "Unsupported authentication mechanism.")
    }

    /// -PLUS is announced only with TLS, but a configured -PLUS mechanism still runs (and fails like a wrong
    /// password in the driver) when cleartext auth is allowed.
    @Test func plusMechanismsOnlyAnnouncedWithTLS() {
        var configuration = Self.scramConfiguration()
        configuration.allowCleartextAuthentication = true
        var plain = ServerSession(configuration: configuration, tlsActive: false)
        #expect(plain.capabilities.contains(.sasl(["PLAIN", "SCRAM-SHA-256"])))
        if case .respondLines(_, let lines) = plain.send("AUTH") { #expect(lines == ["PLAIN", "SCRAM-SHA-256"]) } else { Issue.record("AUTH list") }
        #expect(plain.send("AUTH SCRAM-SHA-256-PLUS") == .saslStep(mechanism: "SCRAM-SHA-256-PLUS", response: nil, first: true))
        let tls = ServerSession(configuration: configuration, tlsActive: true)
        #expect(tls.capabilities.contains(.sasl(["PLAIN", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])))
    }

    /// An AUTH line with an initial response may be as long as a SASL response (OAuth tokens); every other command
    /// keeps the 255-octet limit.
    @Test func longAuthLinesUpToTheSASLLimit() {
        var session = ServerSession(configuration: Self.scramConfiguration(), tlsActive: true)
        let long = Base64.encode(Array(repeating: UInt8(ascii: "x"), count: 600))
        #expect(session.send("AUTH SCRAM-SHA-256 \(long)") == .saslStep(mechanism: "SCRAM-SHA-256", response: Array(repeating: UInt8(ascii: "x"), count: 600), first: true))
        var other = ServerSession(configuration: .init(), tlsActive: true)
        #expect(errResponse(other.send("USER " + String(repeating: "u", count: 300)))?.text == "Line too long.")
        let tooLong = String(repeating: "A", count: other.configuration.maximumSASLLineLength)
        #expect(errResponse(other.send("AUTH PLAIN \(tooLong)"))?.text == "Line too long.")
    }

    @Test func saslBadBase64() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        _ = session.send("AUTH PLAIN")
        #expect(errResponse(session.send("not base64!"))?.text == "Authentication failed: invalid base64 data.")
        #expect(!session.expectsSASLResponse)
    }

    @Test func saslProxyAuthorisationRefused() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        let response = SASLPlainCredentials(authorizationID: "admin", authenticationID: "alice", password: "pw").encodedResponse()
        #expect(session.send("AUTH PLAIN \(response)") == .respond(.err("Authentication failed.", code: .auth)))
    }

    @Test func bareAuthListsMechanisms() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        #expect(session.send("AUTH") == .respondLines(.ok("Supported mechanisms follow."), ["PLAIN"]))
    }

    @Test func loginFailuresMapToCodes() {
        for (failure, code) in [(ServerSession.LoginFailure.maildropInUse, ResponseCode.inUse), (.temporary, .sysTemp), (.permanent, .sysPerm)] {
            var session = ServerSession(configuration: .init(), tlsActive: true)
            _ = session.send("USER a")
            _ = session.send("PASS b")
            #expect(errResponse(session.loginFailed(failure))?.code == code)
            #expect(!session.isAuthenticated)
        }
    }

    @Test func badCommandLimitBeforeLogin() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        #expect(errResponse(session.send("GET / HTTP/1.1")) != nil)
        #expect(errResponse(session.send("Host: x")) != nil)
        guard case .respondAndClose(let r) = session.send("Accept: */*") else {
            Issue.record("third bad command must close")
            return
        }
        #expect(r.text == "Too many invalid commands.")
    }

    @Test func badCommandLimitAfterLogin() {
        var session = self.loggedIn()
        for _ in 1..<POP3Defaults.maximumBadCommandsAfterLogin {
            #expect(errResponse(session.send("XYZZY")) != nil)
        }
        if case .respondAndClose = session.send("XYZZY") {} else { Issue.record("limit not enforced") }
    }

    @Test func wrongStateCommands() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        #expect(errResponse(session.send("STAT"))?.text == "Command not valid before login.")
        var loggedIn = self.loggedIn()
        #expect(errResponse(loggedIn.send("USER bob"))?.text == "Command not valid in this state.")
        #expect(errResponse(loggedIn.send("STLS")) != nil)
    }

    @Test func repliesNeverEchoInput() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        let marker = "<script>alert(1)</script>"
        for line in ["\(marker)", "LIST \(marker)", "USER"] {
            var s = session
            let action = s.send(line)
            if case .respond(let r) = action { #expect(!r.text.contains("script")) }
            if case .respondAndClose(let r) = action { #expect(!r.text.contains("script")) }
        }
        _ = session.send("x")
    }

    @Test func overlongLinesCountAsBad() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        #expect(errResponse(session.receiveOverlongLine())?.text == "Line too long.")
        #expect(session.badCommands == 1)
    }
}

@Suite struct LoginLimitTests {
    @Test func failedLoginsCountTowardTheLimit() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        for attempt in 1...3 {
            _ = session.send("USER alice")
            #expect(session.send("PASS guess\(attempt)") == .login(user: "alice", password: "guess\(attempt)"))
            let action = session.loginFailed(.invalidCredentials)
            if attempt < 3 {
                #expect(action == .respond(.err("Authentication failed.", code: .auth)))
            } else {
                #expect(action == .respondAndClose(.err("Authentication failed.", code: .auth)), "the third failure closes")
            }
        }
    }

    @Test func controlCharactersInUserNamesAreRefused() {
        #expect(throws: CommandParseError.containsControl) { try CommandParser().parse(Array("USER a\rb".utf8)) }
        #expect(throws: CommandParseError.containsControl) { try CommandParser().parse(Array("USER a\u{1B}[2Jb".utf8)) }
        // TAB passes the line check (passwords may hold one) but not the user-name check.
        #expect(throws: CommandParseError.syntax) { try CommandParser().parse(Array("USER a\tb".utf8)) }
    }

    @Test func logEscaping() {
        #expect(logEscaped("alice") == "alice")
        #expect(logEscaped("Grüße") == "Grüße")
        #expect(logEscaped("a\nINFO forged") == "a\\u{a}INFO forged")
        #expect(logEscaped("\u{1B}[31m") == "\\u{1b}[31m")
        #expect(logEscaped("back\\slash") == "back\\\\slash")
        #expect(logEscaped(String(repeating: "x", count: 300)).count == 257)
    }
}
