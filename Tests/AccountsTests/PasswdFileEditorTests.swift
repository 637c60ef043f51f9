@testable import Accounts
import Testing

#if canImport(Glibc)
import Glibc
#endif

struct PasswdFileEditorTests {
    static let original = """
        # pop3d users — managed by `pop3d user`
        alice:{PLAIN}wonderland:1000:1000:Alice:/home/alice::userdb_quota_rule=*:storage=1G\r

          # indented comment, kept as is\t
        bob:{PLAIN}builder:1000:1000
        carol:{PLAIN}c
        """  // no final newline on purpose

    @Test func addKeepsEverythingElseByteForByte() throws {
        try withTemporaryDirectory { directory in
            let path = "\(directory)/passwd"
            try writeFile(path, Self.original, mode: 0o640)
            let editor = PasswdFileEditor(path: path)
            try editor.add(user: "dave", password: "d4ve", uid: 1000, gid: 1000, home: "/home/dave")
            let text = try readFile(path)
            #expect(text.hasPrefix(Self.original + "\n"))
            let added = String(decoding: Array(text.utf8).dropFirst(Self.original.utf8.count + 1), as: UTF8.self)
            #expect(added.hasPrefix("dave:{SHA512-CRYPT}$6$"))
            #expect(added.hasSuffix(":1000:1000::/home/dave\n"))
            #expect(fileMode(path) == 0o640)
            let file = try PasswdFile.parse(text, path: path)
            let dave = try #require(file.record(named: "dave"))
            #expect(PasswordHash.verify(password: "d4ve", against: dave.passwordField))
            #expect(try editor.list() == ["alice", "bob", "carol", "dave"])

            try editor.add(user: "erin", password: "e", scheme: .plain)
            #expect(try readFile(path).hasSuffix(":/home/dave\nerin:{PLAIN}e\n"))
        }
    }

    @Test func addRefusesAnExistingUser() throws {
        try withTemporaryDirectory { directory in
            let path = "\(directory)/passwd"
            try writeFile(path, Self.original)
            let editor = PasswdFileEditor(path: path)
            #expect(throws: PasswdFileError.userExists("bob")) {
                try editor.add(user: "bob", password: "x")
            }
            #expect(try readFile(path) == Self.original)
        }
    }

    @Test func addCreatesANewFileWithMode0600() throws {
        try withTemporaryDirectory { directory in
            let path = "\(directory)/passwd"
            umask(0o022)
            let editor = PasswdFileEditor(path: path)
            try editor.add(user: "alice", password: "pw", scheme: .blfCrypt)
            #expect(fileMode(path) == 0o600)
            let text = try readFile(path)
            #expect(text.hasPrefix("alice:{BLF-CRYPT}$2y$10$"))
            #expect(text.hasSuffix("\n"))
            #expect(text.split(separator: "\n").count == 1)
            #expect(fileMode(path + ".lock") == 0o600)
            let record = try #require(try PasswdFile.parse(text, path: path).record(named: "alice"))
            #expect(PasswordHash.verify(password: "pw", against: record.passwordField))
            // No temp files left behind.
            #expect(try readFile(path) == text)
        }
    }

    @Test(arguments: ["", "a b", "a:b", "a\nb", "tab\there", "\u{7F}"])
    func invalidUserNamesAreRefused(_ name: String) throws {
        try withTemporaryDirectory { directory in
            let editor = PasswdFileEditor(path: "\(directory)/passwd")
            #expect(throws: PasswdFileError.invalidUserName(name)) {
                try editor.add(user: name, password: "x")
            }
            #expect(fileMode("\(directory)/passwd") == nil)
        }
    }

    @Test func invalidFieldsAreRefused() throws {
        try withTemporaryDirectory { directory in
            let editor = PasswdFileEditor(path: "\(directory)/passwd")
            #expect(throws: PasswdFileError.self) { try editor.add(user: "a", password: "x", home: "relative") }
            #expect(throws: PasswdFileError.self) { try editor.add(user: "a", password: "x", home: "/a:b") }
            #expect(throws: PasswdFileError.self) { try editor.add(user: "a", password: "x:y", scheme: .plain) }
            #expect(throws: PasswdFileError.self) { try editor.add(user: "a", password: "x\ny", scheme: .plain) }
            #expect(throws: PasswdFileError.self) { try editor.add(user: "a", password: "x\u{0}y") }
            // A ':' is fine in a hashed password.
            try editor.add(user: "a", password: "x:y")
            #expect(try editor.list() == ["a"])
        }
    }

    @Test func setPasswordReplacesOnlyThePasswordColumn() throws {
        try withTemporaryDirectory { directory in
            let path = "\(directory)/passwd"
            try writeFile(path, Self.original, mode: 0o640)
            let editor = PasswdFileEditor(path: path)
            try editor.setPassword(user: "alice", password: "looking glass", scheme: .plain)
            try editor.setPassword(user: "carol", password: "new carol")
            let text = try readFile(path)
            let expectedPrefix = Self.original
                .replacingOccurrences("alice:{PLAIN}wonderland:", with: "alice:{PLAIN}looking glass:")
                .replacingOccurrences("carol:{PLAIN}c", with: "carol:")
            #expect(text.hasPrefix(expectedPrefix))
            #expect(!text.hasSuffix("\n"))
            let file = try PasswdFile.parse(text, path: path)
            let carol = try #require(file.record(named: "carol"))
            #expect(PasswordHash.verify(password: "new carol", against: carol.passwordField))
            #expect(file.record(named: "alice")?.extraFields == ["userdb_quota_rule=*:storage=1G"])
            #expect(fileMode(path) == 0o640)
            #expect(throws: PasswdFileError.noSuchUser("zed")) { try editor.setPassword(user: "zed", password: "x") }
        }
    }

    @Test func deleteRemovesOnlyThatUsersLines() throws {
        try withTemporaryDirectory { directory in
            let path = "\(directory)/passwd"
            try writeFile(path, Self.original + "\nbob:{PLAIN}duplicate\n")
            let editor = PasswdFileEditor(path: path)
            try editor.delete(user: "bob")
            #expect(
                try readFile(path)
                    == Self.original.replacingOccurrences("bob:{PLAIN}builder:1000:1000\n", with: "") + "\n"
            )
            try editor.delete(user: "alice")
            #expect(try editor.list() == ["carol"])
            #expect(try readFile(path).hasPrefix("# pop3d users — managed by `pop3d user`\n\n  # indented comment"))
            #expect(throws: PasswdFileError.noSuchUser("alice")) { try editor.delete(user: "alice") }
        }
    }

    @Test func aMalformedFileIsNeverRewritten() throws {
        try withTemporaryDirectory { directory in
            let path = "\(directory)/passwd"
            let broken = "alice:{PLAIN}a\nnot a valid line\n"
            try writeFile(path, broken)
            let editor = PasswdFileEditor(path: path)
            #expect(throws: PasswdFileError.self) { try editor.add(user: "bob", password: "b") }
            #expect(throws: PasswdFileError.self) { try editor.delete(user: "alice") }
            #expect(throws: PasswdFileError.self) { try editor.setPassword(user: "alice", password: "x") }
            #expect(throws: PasswdFileError.self) { try editor.list() }
            #expect(try readFile(path) == broken)
        }
    }

    @Test func missingFile() throws {
        try withTemporaryDirectory { directory in
            let editor = PasswdFileEditor(path: "\(directory)/none")
            #expect(throws: PasswdFileError.self) { try editor.list() }
            #expect(throws: PasswdFileError.self) { try editor.delete(user: "a") }
            #expect(throws: PasswdFileError.self) { try editor.setPassword(user: "a", password: "x") }
        }
    }

    @Test func concurrentAddsAreSerialised() async throws {
        try await withTemporaryDirectory { directory in
            let path = "\(directory)/passwd"
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<12 {
                    group.addTask {
                        try PasswdFileEditor(path: path).add(user: "user\(index)", password: "p", scheme: .plain)
                    }
                }
                try await group.waitForAll()
            }
            #expect(try Set(PasswdFileEditor(path: path).list()) == Set((0..<12).map { "user\($0)" }))
        }
    }
}

extension String {
    fileprivate func replacingOccurrences(_ target: String, with replacement: String) -> String {
        self.split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
