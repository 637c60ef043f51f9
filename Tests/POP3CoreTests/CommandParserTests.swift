import NIOCore
import Testing

@testable import POP3Core

struct ParseFixture: CustomTestStringConvertible, Sendable {
    let line: String
    let expected: Result<Command, CommandParseError>
    var testDescription: String { self.line.debugDescription }

    init(_ line: String, _ command: Command) {
        self.line = line
        self.expected = .success(command)
    }

    init(_ line: String, error: CommandParseError) {
        self.line = line
        self.expected = .failure(error)
    }
}

extension Command: CustomTestStringConvertible {
    public var testDescription: String { self.description }
}

@Suite struct CommandParserTests {
    static let n1 = MessageNumber(1)!
    static let fixtures: [ParseFixture] = [
        ParseFixture("USER alice", .user("alice")),
        ParseFixture("user alice", .user("alice")),
        ParseFixture("USER alice@example.com", .user("alice@example.com")),
        ParseFixture("PASS secret with spaces", .pass("secret with spaces")),
        ParseFixture("PASS  leading", .pass(" leading")),
        ParseFixture("PASS tab\there", .pass("tab\there")),
        ParseFixture("STAT", .stat),
        ParseFixture("stat", .stat),
        ParseFixture("LIST", .list(nil)),
        ParseFixture("LIST 1", .list(n1)),
        ParseFixture("LIST 4294967295", .list(MessageNumber(4_294_967_295)!)),
        ParseFixture("UIDL", .uidl(nil)),
        ParseFixture("UIDL 1", .uidl(n1)),
        ParseFixture("RETR 1", .retr(n1)),
        ParseFixture("DELE 1", .dele(n1)),
        ParseFixture("NOOP", .noop),
        ParseFixture("RSET", .rset),
        ParseFixture("QUIT", .quit),
        ParseFixture("TOP 1 0", .top(n1, lines: 0)),
        ParseFixture("TOP 1 10", .top(n1, lines: 10)),
        ParseFixture("CAPA", .capa),
        ParseFixture("STLS", .stls),
        ParseFixture("AUTH", .auth(mechanism: nil, initialResponse: nil)),
        ParseFixture("AUTH plain", .auth(mechanism: "PLAIN", initialResponse: nil)),
        ParseFixture("AUTH PLAIN AGFsaWNlAHNlY3JldA==", .auth(mechanism: "PLAIN", initialResponse: "AGFsaWNlAHNlY3JldA==")),
        ParseFixture("APOP alice 0123456789abcdef", .apop),
        // Errors: none of these may be executed as something else.
        ParseFixture("", error: .empty),
        ParseFixture("LIST 0", error: .noSuchMessage),
        ParseFixture("LIST 4294967296", error: .noSuchMessage),
        ParseFixture("LIST 4294967297", error: .noSuchMessage),
        ParseFixture("LIST 99999999999999999999", error: .noSuchMessage),
        ParseFixture("LIST -1", error: .syntax),
        ParseFixture("LIST +1", error: .syntax),
        ParseFixture("LIST 1 2", error: .syntax),
        ParseFixture("LIST x", error: .syntax),
        ParseFixture("RETR", error: .syntax),
        ParseFixture("RETR 0", error: .noSuchMessage),
        ParseFixture("DELE 1x", error: .syntax),
        ParseFixture("TOP 1 -1", error: .syntax),
        ParseFixture("TOP 1", error: .syntax),
        ParseFixture("TOP 1 99999999999", error: .syntax),
        ParseFixture("STAT 1", error: .syntax),
        ParseFixture("QUIT now", error: .syntax),
        ParseFixture("USER", error: .syntax),
        ParseFixture("USER ", error: .syntax),
        ParseFixture("PASS", error: .syntax),
        ParseFixture("AUTH PLAIN a b", error: .syntax),
        ParseFixture("GET / HTTP/1.1", error: .unknownCommand),
        ParseFixture("Host: example.com", error: .unknownCommand),
        ParseFixture("XYZZY", error: .unknownCommand),
        ParseFixture("US\u{0}ER a", error: .containsNUL),
        // A lone CR, other C0 controls and DEL: rejected anywhere, PASS included (docs/security-cases.md 38).
        ParseFixture("PASS a\rb", error: .containsControl),
        ParseFixture("PASS secret\u{1B}[2J", error: .containsControl),
        ParseFixture("USER a\u{7F}", error: .containsControl),
        ParseFixture("CAPA\r", error: .containsControl),
        ParseFixture("STAT\u{8}", error: .containsControl),
    ]

    @Test(arguments: fixtures)
    func parses(_ fixture: ParseFixture) {
        let result = Result { () throws(CommandParseError) -> Command in try CommandParser().parse(Array(fixture.line.utf8)) }
        #expect(result == fixture.expected)
    }

    @Test func invalidUTF8IsRejected() {
        #expect(throws: CommandParseError.invalidUTF8) { try CommandParser().parse([0x55, 0x53, 0x45, 0x52, 0x20, 0xC3, 0x28]) }
    }

    @Test func lineLimitCountsTheCRLF() throws {
        let parser = CommandParser(maximumLineLength: 255)
        let ok = "USER " + String(repeating: "a", count: 248)  // 253 + CRLF = 255
        #expect(try parser.parse(Array(ok.utf8)) == .user(String(repeating: "a", count: 248)))
        let long = ok + "a"
        #expect(throws: CommandParseError.lineTooLong(length: 256, maximum: 255)) { try parser.parse(Array(long.utf8)) }
    }

    @Test func descriptionsRedactSecrets() {
        #expect(!Command.pass("hunter2").description.contains("hunter2"))
        #expect(!Command.auth(mechanism: "PLAIN", initialResponse: "AGFsaWNlAHNlY3JldA==").description.contains("AGFs"))
        #expect(!SASLPlainCredentials(authenticationID: "a", password: "hunter2").description.contains("hunter2"))
    }
}

@Suite struct Base64Tests {
    @Test(arguments: [
        ("", ""), ("Zg==", "f"), ("Zm8=", "fo"), ("Zm9v", "foo"), ("Zm9vYg==", "foob"), ("Zm9vYmE=", "fooba"), ("Zm9vYmFy", "foobar"),
    ])
    func rfc4648Vectors(encoded: String, decoded: String) {
        #expect(Base64.decode(encoded) == Array(decoded.utf8))
        #expect(Base64.encode(Array(decoded.utf8)) == encoded)
    }

    @Test(arguments: ["Zg", "Zg=", "Zh==", "Z===", "Zm9v!", "Zm=v", "Zg==Zg==", "====", " Zg=="])
    func rejectsNonCanonical(_ text: String) {
        #expect(Base64.decode(text) == nil)
    }

    @Test func roundTripsAllLengths() {
        var generator = SystemRandomNumberGenerator()
        for length in 0..<64 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            #expect(Base64.decode(Base64.encode(bytes)) == bytes)
        }
    }

    @Test func saslPlainDecoding() throws {
        let creds = try SASLPlainCredentials.decode(response: SASLPlainCredentials(authenticationID: "alice", password: "p w").encodedResponse())
        #expect(creds.authenticationID == "alice" && creds.password == "p w" && creds.authorizationID.isEmpty)
        #expect(throws: SASLPlainCredentials.DecodeError.badBase64) { try SASLPlainCredentials.decode(response: "!!!") }
        #expect(throws: SASLPlainCredentials.DecodeError.malformed) { try SASLPlainCredentials.decode(response: Base64.encode(Array("alice".utf8))) }
        #expect(throws: SASLPlainCredentials.DecodeError.malformed) { try SASLPlainCredentials.decode(response: "=") }
    }
}
