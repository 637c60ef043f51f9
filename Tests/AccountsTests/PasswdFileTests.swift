@testable import Accounts
import Testing

struct PasswdFileTests {
    struct LineFixture: Sendable, CustomTestStringConvertible {
        var line: String
        var expected: UserRecord
        var testDescription: String { String(reflecting: self.line) }
    }

    @Test(arguments: [
        LineFixture(
            line: "alice:{SHA512-CRYPT}$6$abc$def:1000:1001:Alice Liddell:/home/alice:/bin/false:userdb_quota_rule=*:storage=1G allow_nets=10.0.0.0/8",
            expected: UserRecord(
                name: "alice", passwordField: "{SHA512-CRYPT}$6$abc$def", uid: 1000, gid: 1001, home: "/home/alice",
                extraFields: ["userdb_quota_rule=*:storage=1G", "allow_nets=10.0.0.0/8"]
            )
        ),
        LineFixture(line: "bob:{PLAIN}x", expected: UserRecord(name: "bob", passwordField: "{PLAIN}x")),
        LineFixture(line: "bob:", expected: UserRecord(name: "bob", passwordField: "")),
        LineFixture(line: "bob:{PLAIN}x:", expected: UserRecord(name: "bob", passwordField: "{PLAIN}x")),
        LineFixture(line: "bob:{PLAIN}x:5", expected: UserRecord(name: "bob", passwordField: "{PLAIN}x", uid: 5)),
        LineFixture(line: "bob:{PLAIN}x::7", expected: UserRecord(name: "bob", passwordField: "{PLAIN}x", gid: 7)),
        LineFixture(
            line: "bob:{PLAIN}x:::::",
            expected: UserRecord(name: "bob", passwordField: "{PLAIN}x")
        ),
        LineFixture(
            line: "bob:{PLAIN}x:1:2::/srv/mail/bob",
            expected: UserRecord(name: "bob", passwordField: "{PLAIN}x", uid: 1, gid: 2, home: "/srv/mail/bob")
        ),
        LineFixture(
            line: "carol@example.org:$y$j9T$salt$hash:4294967295:0::/m::userdb_mail=maildir:~/Maildir",
            expected: UserRecord(
                name: "carol@example.org", passwordField: "$y$j9T$salt$hash", uid: 4_294_967_295, gid: 0, home: "/m",
                extraFields: ["userdb_mail=maildir:~/Maildir"]
            )
        ),
        LineFixture(
            line: "d:{PLAIN}x:::::: a  b ",
            expected: UserRecord(name: "d", passwordField: "{PLAIN}x", extraFields: ["a", "b"])
        ),
        LineFixture(line: "\u{00FC}ser:{PLAIN}x\r", expected: UserRecord(name: "\u{00FC}ser", passwordField: "{PLAIN}x")),
    ])
    func parsesLine(_ fixture: LineFixture) throws {
        let file = try PasswdFile.parse(fixture.line + "\n", path: "/etc/pop3d/passwd")
        #expect(file.records == [fixture.expected])
        #expect(file.record(named: fixture.expected.name) == fixture.expected)
    }

    @Test func skipsCommentsAndBlankLinesAndKeepsOrder() throws {
        let text = """
            # Virtual users

            alice:{PLAIN}a
              \t
            #bob:{PLAIN}b
              # indented comment: also a comment
            carol:{PLAIN}c\r
            \r
            dave:{PLAIN}d
            """
        let file = try PasswdFile.parse(text, path: "p")
        #expect(file.records.map(\.name) == ["alice", "carol", "dave"])
        #expect(file.record(named: "bob") == nil)
        #expect(file.record(named: "carol")?.passwordField == "{PLAIN}c")
        #expect(file.record(named: "Alice") == nil)
    }

    @Test func firstDuplicateWins() throws {
        let file = try PasswdFile.parse("a:{PLAIN}1\nb:{PLAIN}2\na:{PLAIN}3\n", path: "p")
        #expect(file.records.map(\.passwordField) == ["{PLAIN}1", "{PLAIN}2"])
        #expect(file.record(named: "a")?.passwordField == "{PLAIN}1")
        #expect(file.duplicates == [PasswdFile.Duplicate(name: "a", line: 3)])
    }

    @Test func emptyFileHasNoUsers() throws {
        #expect(try PasswdFile.parse("", path: "p").records.isEmpty)
        #expect(try PasswdFile.parse("\n\n# nothing\n", path: "p").records.isEmpty)
    }

    struct MalformedFixture: Sendable, CustomTestStringConvertible {
        var text: String
        var line: Int
        var reasonContains: String
        var testDescription: String { String(reflecting: self.text) }
    }

    @Test(arguments: [
        MalformedFixture(text: "alice", line: 1, reasonContains: "missing ':'"),
        MalformedFixture(text: "# c\nok:{PLAIN}x\n\nbad user:{PLAIN}x\n", line: 4, reasonContains: "whitespace"),
        MalformedFixture(text: ":{PLAIN}x", line: 1, reasonContains: "empty"),
        MalformedFixture(text: "a:x\n b:x", line: 2, reasonContains: "whitespace"),
        MalformedFixture(text: "a\u{7}b:x", line: 1, reasonContains: "control"),
        MalformedFixture(text: "a\u{85}b:x", line: 1, reasonContains: "control"),
        MalformedFixture(text: "a\u{3000}b:x", line: 1, reasonContains: "whitespace"),
        MalformedFixture(text: "a:x\nb:x:12a", line: 2, reasonContains: "uid"),
        MalformedFixture(text: "a:x:-1", line: 1, reasonContains: "uid"),
        MalformedFixture(text: "a:x:+1", line: 1, reasonContains: "uid"),
        MalformedFixture(text: "a:x:4294967296", line: 1, reasonContains: "uid"),
        MalformedFixture(text: "a:x:1: 2", line: 1, reasonContains: "gid"),
        MalformedFixture(text: "a:x\r\nb:x\r\nc:x:1:vmail\r\n", line: 3, reasonContains: "gid"),
    ])
    func malformedLineNamesPathAndLine(_ fixture: MalformedFixture) throws {
        let error = try #require(throws: PasswdFileError.self) {
            try PasswdFile.parse(fixture.text, path: "/etc/pop3d/passwd")
        }
        guard case .malformed(let path, let line, let reason) = error else {
            Issue.record("unexpected error \(error)")
            return
        }
        #expect(path == "/etc/pop3d/passwd")
        #expect(line == fixture.line)
        #expect(reason.contains(fixture.reasonContains), "\(reason)")
        #expect(error.description.hasPrefix("/etc/pop3d/passwd:\(fixture.line): "))
    }

    @Test func invalidUTF8IsMalformedAtItsLine() throws {
        let bytes = Array("a:{PLAIN}x\n".utf8) + [0x62, 0xC3, 0x28, 0x3A, 0x78, 0x0A]
        #expect(throws: PasswdFileError.malformed(path: "p", line: 2, reason: "not valid UTF-8")) {
            try PasswdFile.parse(bytes: bytes, path: "p")
        }
    }
}
