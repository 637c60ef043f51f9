@testable import Accounts
import Testing

/// Password fields never reach a description, a debug description, a dump or an error.
struct RedactionTests {
    static let secretField = "{SHA512-CRYPT}$6$SECRETSALT$SECRETHASHvalue"

    @Test func userRecordDescriptions() {
        let record = UserRecord(
            name: "alice", passwordField: Self.secretField, uid: 1, gid: 2, home: "/h", extraFields: ["nopassword"]
        )
        var dumped = ""
        dump(record, to: &dumped)
        var dumpedFile = ""
        dump(PasswdFile(records: [record]), to: &dumpedFile)
        let renderings = [
            "\(record)", String(describing: record), String(reflecting: record), dumped, dumpedFile,
            "\([record])", "\(AuthenticationResult.success(record))",
            String(reflecting: AuthenticationResult.success(record)),
            "\(PasswdFile(records: [record]))", String(reflecting: PasswdFile(records: [record])),
        ]
        for rendering in renderings {
            #expect(!rendering.contains("SECRET"), "\(rendering)")
            #expect(!rendering.contains("$6$"), "\(rendering)")
        }
        #expect("\(record)".contains("alice"))
        #expect("\(record)".contains("<redacted>"))
    }

    @Test func parseErrorsDoNotQuoteTheLine() {
        for text in [
            "alice:\(Self.secretField):notanumber",
            "bad name:\(Self.secretField)",
            "alice:\(Self.secretField):1:2x",
        ] {
            do {
                _ = try PasswdFile.parse(text, path: "/p")
                Issue.record("expected an error for \(text)")
            } catch {
                #expect(!"\(error)".contains("SECRET"), "\(error)")
                #expect(!String(reflecting: error).contains("SECRET"), "\(error)")
            }
        }
    }

    @Test func errorDescriptionsEscapeUserNames() {
        let error = PasswdFileError.invalidUserName("evil\nFAKE LOG LINE")
        #expect(!error.description.contains("\n"))
        #expect(PasswdFileError.userExists("a\u{1B}[31m").description.contains("\\u{1B}"))
    }

    @Test func editorErrorsDoNotContainThePassword() throws {
        try withTemporaryDirectory { directory in
            let editor = PasswdFileEditor(path: "\(directory)/passwd")
            for password in ["SECRET:colon", "SECRET\nnewline"] {
                do {
                    try editor.add(user: "a", password: password, scheme: .plain)
                    Issue.record("expected an error")
                } catch {
                    #expect(!"\(error)".contains("SECRET"))
                }
            }
        }
    }
}
