import NIOCore
import Testing

@testable import POP3Core

/// RFC 2449 §6.5 LOGIN-DELAY announced and answered; RFC 6856 UTF8 and LANG.
@Suite struct PolicyTests {
    @Test func loginDelayIsAnnouncedOnlyWhenSet() {
        #expect(!ServerSession(configuration: .init(), tlsActive: true).capabilities.map(\.description).contains { $0.hasPrefix("LOGIN-DELAY") })
        var configuration = ServerSession.Configuration()
        configuration.loginDelaySeconds = 900
        let session = ServerSession(configuration: configuration, tlsActive: true)
        #expect(session.capabilities.map(\.description).contains("LOGIN-DELAY 900"))
    }

    @Test func loginDelayRefusalCarriesItsCodeAndKeepsTheSession() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        _ = session.send("USER alice")
        _ = session.send("PASS pw")
        let reply = errResponse(session.loginFailed(.loginDelay))
        #expect(reply?.code == .loginDelay)
        #expect(session.badCommands == 0, "a refused early login is not a bad command")
        #expect(okText(session.send("USER alice")) != nil)
    }

    @Test func utf8AndLangAreAnnouncedAndAnswered() {
        var session = ServerSession(configuration: .init(), tlsActive: true)
        let caps = session.capabilities.map(\.description)
        #expect(caps.contains("UTF8 USER") && caps.contains("LANG"))
        #expect(okText(session.send("UTF8")) != nil)
        #expect(session.utf8Mode)
        #expect(session.send("LANG") == .respondLines(.ok("Language listing follows."), ["en English"]))
        #expect(okText(session.send("LANG en")) != nil)
        #expect(okText(session.send("LANG *")) != nil)
        #expect(errResponse(session.send("LANG fr")) != nil)
        #expect(errResponse(session.send("LANG en_US!")) != nil, "not a language tag")
        // UTF-8 user names go through as sent (the server normalises them).
        _ = session.send("USER jörg")
        #expect(session.send("PASS pässword") == .login(user: "jörg", password: "pässword"))
        _ = session.loginSucceeded(messages: [])
        #expect(errResponse(session.send("UTF8")) != nil, "UTF8 only before login")
        #expect(okText(session.send("LANG en")) != nil, "LANG in any state")
    }

    @Test func utf8CanBeTurnedOff() {
        var configuration = ServerSession.Configuration()
        configuration.utf8 = false
        var session = ServerSession(configuration: configuration, tlsActive: true)
        let caps = session.capabilities.map(\.description)
        #expect(!caps.contains("UTF8 USER") && !caps.contains("LANG"))
        #expect(errResponse(session.send("UTF8")) != nil)
        #expect(errResponse(session.send("LANG")) != nil)
    }
}

@Suite struct ExpireTests {
    static let messages = [MaildropMessage(uniqueID: "a", size: 10), MaildropMessage(uniqueID: "b", size: 20), MaildropMessage(uniqueID: "c", size: 30)]

    func loggedIn(expireDays: Int?, configuration: ServerSession.Configuration = .init()) -> ServerSession {
        var session = ServerSession(configuration: configuration, tlsActive: true)
        _ = session.send("USER u")
        _ = session.send("PASS p")
        _ = session.loginSucceeded(messages: Self.messages, expireDays: expireDays)
        return session
    }

    @Test func capaSaysNeverOrDaysWithUserBeforeLoginAndTheUsersValueAfter() {
        var configuration = ServerSession.Configuration()
        #expect(ServerSession(configuration: configuration, tlsActive: true).capabilities.map(\.description).contains("EXPIRE NEVER"))
        configuration.expireDays = 30
        configuration.expirePerUser = true
        #expect(ServerSession(configuration: configuration, tlsActive: true).capabilities.map(\.description).contains("EXPIRE 30 USER"))
        let session = self.loggedIn(expireDays: 7, configuration: configuration)
        #expect(session.capabilities.map(\.description).contains("EXPIRE 7"))
    }

    @Test func expireZeroDeletesWhatWasRetrievedAtQuitWithoutDele() {
        var session = self.loggedIn(expireDays: 0)
        _ = session.send("RETR 2")
        _ = session.send("TOP 3 0")  // TOP is not a retrieval
        _ = session.send("DELE 1")
        #expect(session.send("QUIT") == .commit(deleting: [0, 1]))
        #expect(session.retrievedIndices == [1])
    }

    @Test func withoutExpireZeroOnlyDeleDeletes() {
        var session = self.loggedIn(expireDays: 5)
        _ = session.send("RETR 2")
        #expect(session.send("QUIT") == .commit(deleting: []))
        #expect(session.retrievedIndices == [1], "kept through UPDATE for the first-retrieval log")
    }
}
