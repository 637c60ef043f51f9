import Foundation
import Testing

@testable import POP3Server

/// The bad-input table: each input gets its reply, and the server keeps serving afterwards.
struct BadInput: Sendable, CustomTestStringConvertible {
    let name: String
    let loggedIn: Bool
    let setup: [String]
    /// The bytes sent as they are (a line without a line end gets CRLF).
    let input: [UInt8]
    let expected: String
    var testDescription: String { self.name }

    init(name: String, loggedIn: Bool, setup: [String], input: String, expected: String) {
        self.init(name: name, loggedIn: loggedIn, setup: setup, bytes: Array(input.utf8), expected: expected)
    }

    init(name: String, loggedIn: Bool, setup: [String], bytes: [UInt8], expected: String) {
        self.name = name
        self.loggedIn = loggedIn
        self.setup = setup
        self.input = bytes.last == UInt8(ascii: "\n") ? bytes : bytes + Array("\r\n".utf8)
        self.expected = expected
    }
}

@Suite(.serialized) struct BadInputTests {
    static let cases: [BadInput] = [
        BadInput(name: "over-long line", loggedIn: false, setup: [], input: String(repeating: "A", count: 300) + "\r\n", expected: "-ERR Line too long."),
        BadInput(name: "80 KB without newline", loggedIn: false, setup: [], input: String(repeating: "B", count: 80_000) + "\r\n", expected: "-ERR Line too long."),
        BadInput(name: "NUL byte", loggedIn: false, setup: [], input: "US\u{0}ER a\r\n", expected: "-ERR NUL byte in command."),
        BadInput(name: "lone CR in a password", loggedIn: false, setup: ["USER alice"], input: "PASS sec\rret\r\n", expected: "-ERR Control character in command."),
        BadInput(name: "invalid UTF-8", loggedIn: true, setup: [], bytes: Array("USER ".utf8) + [0xFF, 0xFE], expected: "-ERR Invalid UTF-8 in command."),
        BadInput(name: "unknown command", loggedIn: false, setup: [], input: "XYZZY\r\n", expected: "-ERR Unknown command."),
        BadInput(name: "wrong state before login", loggedIn: false, setup: [], input: "STAT\r\n", expected: "-ERR Command not valid before login."),
        BadInput(name: "wrong state after login", loggedIn: true, setup: [], input: "USER bob\r\n", expected: "-ERR Command not valid in this state."),
        BadInput(name: "LIST 0", loggedIn: true, setup: [], input: "LIST 0\r\n", expected: "-ERR No such message."),
        BadInput(name: "LIST 4294967297", loggedIn: true, setup: [], input: "LIST 4294967297\r\n", expected: "-ERR No such message."),
        BadInput(name: "LIST -1", loggedIn: true, setup: [], input: "LIST -1\r\n", expected: "-ERR Invalid arguments."),
        BadInput(name: "RETR of a deleted message", loggedIn: true, setup: ["DELE 1"], input: "RETR 1\r\n", expected: "-ERR Message is deleted."),
        BadInput(name: "DELE twice", loggedIn: true, setup: ["DELE 1"], input: "DELE 1\r\n", expected: "-ERR Message is deleted."),
        BadInput(name: "TOP 1 -1", loggedIn: true, setup: [], input: "TOP 1 -1\r\n", expected: "-ERR Invalid arguments."),
        BadInput(name: "AUTH with bad base64", loggedIn: false, setup: [], input: "AUTH PLAIN !!!notbase64\r\n", expected: "-ERR [AUTH] Authentication failed: invalid base64 data."),
        BadInput(name: "PASS without USER", loggedIn: false, setup: [], input: "PASS secret\r\n", expected: "-ERR No user name given; send USER first."),
        BadInput(name: "APOP", loggedIn: false, setup: [], input: "APOP alice 0123\r\n", expected: "-ERR APOP is not supported."),
        BadInput(name: "STLS on TLS", loggedIn: false, setup: [], input: "STLS\r\n", expected: "-ERR TLS is already active."),
        BadInput(name: "HTTP request", loggedIn: false, setup: [], input: "GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n", expected: "-ERR Unknown command."),
    ]

    @Test(arguments: cases)
    func badInputGetsItsReplyAndTheServerStillServes(_ testCase: BadInput) async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        try server.deliver("alice", "Subject: x\n\nbody\n")
        let client = testCase.loggedIn ? try await server.login("alice") : try await server.connectTLS()
        for line in testCase.setup { _ = try await client.command(line) }
        try await client.channel.outbound.write(.init(bytes: testCase.input))
        #expect(try await client.readLine() == testCase.expected)
        if testCase.name == "HTTP request" {
            // Three bad lines before login: the third closes the connection (ALPACA).
            let rest = try await client.readUntilClosed()
            #expect(rest == ["-ERR Unknown command.", "-ERR Too many invalid commands."])
        }
        // The server still serves: the same client where possible, and a fresh login in any case.
        let fresh = try await server.connectTLS()
        #expect(try await fresh.command("CAPA").hasPrefix("+OK"))
        _ = try await fresh.readMultiline()
        _ = try await fresh.command("QUIT")
    }
}
