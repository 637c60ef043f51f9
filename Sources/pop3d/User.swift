import Accounts
import ArgumentParser
import Foundation
import POP3Server
import SASL
import SystemIO

#if canImport(Glibc)
import Glibc
#endif

struct User: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage accounts in the passwd-file (or in PostgreSQL with storage.backend: postgres). Passwords are read from standard input, never from arguments.",
        subcommands: [Add.self, Passwd.self, Del.self, List.self]
    )

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a user; the password is one line on stdin.")
        @Argument var name: String
        @OptionGroup var options: ConfigOption
        @Option(help: "Password scheme: SCRAM-SHA-256 (default: works for SCRAM, PLAIN and USER/PASS logins), SHA512-CRYPT, BLF-CRYPT, CRYPT (yescrypt), SHA256-CRYPT (these three cannot do SCRAM), SCRAM-SHA-1, PLAIN.")
        var scheme = "SCRAM-SHA-256"

        func run() throws {
            let options = self.options
            let configuration = try runBlocking { try await options.load() }
            let password = try readPassword(prompt: "Password for \(self.name): ")
            try AccountEditor(configuration: configuration).add(
                user: StringPreparation.userName(self.name),
                password: password,
                scheme: try parseScheme(self.scheme)
            )
            print("added \(self.name)")
        }
    }

    struct Passwd: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a user's password; the new password is one line on stdin.")
        @Argument var name: String
        @OptionGroup var options: ConfigOption
        @Option(help: "Password scheme (as for user add; default SCRAM-SHA-256).")
        var scheme = "SCRAM-SHA-256"

        func run() throws {
            let options = self.options
            let configuration = try runBlocking { try await options.load() }
            let password = try readPassword(prompt: "New password for \(self.name): ")
            try AccountEditor(configuration: configuration).setPassword(
                user: StringPreparation.userName(self.name),
                password: password,
                scheme: try parseScheme(self.scheme)
            )
            print("changed password of \(self.name)")
        }
    }

    struct Del: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a user (a Maildir is left in place; in PostgreSQL the messages go with the account).")
        @Argument var name: String
        @OptionGroup var options: ConfigOption

        func run() throws {
            let options = self.options
            let configuration = try runBlocking { try await options.load() }
            try AccountEditor(configuration: configuration).delete(user: self.name)
            print("deleted \(self.name)")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List user names.")
        @OptionGroup var options: ConfigOption

        func run() throws {
            let options = self.options
            let configuration = try runBlocking { try await options.load() }
            for name in try AccountEditor(configuration: configuration).list() { print(name) }
        }
    }
}

func parseScheme(_ text: String) throws -> PasswordScheme {
    guard let scheme = PasswordScheme(rawValue: text.uppercased()) else {
        throw ValidationError("unknown scheme \(text); one of \(PasswordScheme.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    return scheme
}

/// Reads one line from stdin; on a terminal it prompts on stderr and turns echo off.
func readPassword(prompt: String) throws -> String {
    let bytes = try PasswordInput.readLine(from: STDIN_FILENO, prompt: prompt, promptFD: STDERR_FILENO)
    guard let line = PasswordInput.firstLine(of: bytes), !line.isEmpty else {
        throw ValidationError("no password on standard input")
    }
    // Stored as logins compare it (RFC 6856: SASLprep; ASCII passwords are unchanged).
    guard let password = StringPreparation.saslPrep(line) else {
        throw ValidationError("the password holds characters SASLprep (RFC 4013) prohibits, such as control characters")
    }
    return password
}
