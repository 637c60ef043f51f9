import ArgumentParser
import Foundation

/// `pop3d import`: planned (issue 11), not built. It says so instead of pretending: exit 69 (EX_UNAVAILABLE).
struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy a remote POP3 maildrop with its UIDLs (not implemented yet)."
    )

    @Argument(help: "pop3s://USER@HOST[:PORT]") var source: String?
    @Option var user: String?
    @Option(name: .customLong("password-file")) var passwordFile: String?
    @Option var config: String?
    @Option(name: .customLong("ca-file")) var caFile: String?
    @Flag var verify = false

    func run() throws {
        FileHandle.standardError.write(Data("""
            pop3d import: not implemented yet. Nothing was read or copied.
            A Dovecot Maildir needs no import: point maildir: at it and pop3d serves Dovecot's UIDLs as they are.

            """.utf8))
        throw ExitCode(69)  // EX_UNAVAILABLE
    }
}
