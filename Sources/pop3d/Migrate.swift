import ArgumentParser
import Foundation
import Logging
import POP3Server
import SystemIO

/// `pop3d migrate maildir --from OLD.yaml --config NEW.yaml [--verify]`.
struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Move a Maildir set-up into PostgreSQL.",
        subcommands: [Maildir.self]
    )

    struct Maildir: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy every user (passwd-file entry and Maildir, UIDLs kept) into the PostgreSQL backend of --config; resumable; the Maildirs stay."
        )
        @Option(name: .long, help: "The Maildir configuration to copy from (passwd_file, maildir).")
        var from: String
        @OptionGroup var options: ConfigOption
        @Flag(help: "Compare each user's listing (UIDLs and sizes) in the Maildir and the database afterwards; exit 1 on any difference.")
        var verify = false
        @Flag(name: .customLong("verify-only"), help: "Compare without copying.")
        var verifyOnly = false

        func run() throws {
            let verify = self.verify || self.verifyOnly
            let copy = !self.verifyOnly
            try moveBetweenBackends(command: "pop3d migrate", maildirConfig: self.from, options: self.options, verify: verify) { migration, progress in
                try migration.run(copy: copy, verify: verify, progress: progress)
            }
        }
    }
}

/// `pop3d export maildir --to OLD.yaml --config NEW.yaml [--verify]`.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Move a PostgreSQL set-up back into Maildirs (nobody is locked in).",
        subcommands: [Maildir.self]
    )

    struct Maildir: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy every database account (passwd-file line with its stored password) and message (UIDL kept) into the Maildir set-up of --to; resumable; the database stays. Run it as the user the Maildirs belong to."
        )
        @Option(name: .long, help: "The Maildir configuration to copy into (passwd_file, maildir).")
        var to: String
        @OptionGroup var options: ConfigOption
        @Flag(help: "Compare each user's listing (UIDLs and sizes) afterwards; exit 1 on any difference.")
        var verify = false

        func run() throws {
            let verify = self.verify
            try moveBetweenBackends(command: "pop3d export", maildirConfig: self.to, options: self.options, verify: verify) { migration, progress in
                try migration.export(verify: verify, progress: progress)
            }
        }
    }
}

/// Loads both configurations, runs `move`, prints a line per user (and each difference), and maps the outcome to
/// the exit status: 0, 1 (a verified difference), 75 (run again), 78 (configuration).
private func moveBetweenBackends(
    command: String,
    maildirConfig: String,
    options: ConfigOption,
    verify: Bool,
    _ move: (MaildirMigration, @escaping @Sendable (MaildirMigration.Report) -> Void) throws -> [MaildirMigration.Report]
) throws {
    do {
        let maildir = try runBlocking { try await ServerConfiguration.load(file: maildirConfig) }
        let database = try runBlocking { try await options.load() }
        var logger = Logger(label: "pop3d")
        logger.logLevel = .error
        let reports = try move(try MaildirMigration(from: maildir, to: database, logger: logger)) { report in
            var line = "\(report.user): \(report.copied) copied, \(report.alreadyThere) already there"
            if verify { line += report.differences.isEmpty ? ", verified" : ", \(report.differences.count) differences" }
            print(line)
            for difference in report.differences { print("  \(difference)") }
        }
        let differing = reports.filter { !$0.differences.isEmpty }.count
        if verify && differing > 0 {
            FileHandle.standardError.write(Data("\(command): \(differing) of \(reports.count) users differ\n".utf8))
            throw ExitCode(1)
        }
    } catch let error as ConfigurationError {
        FileHandle.standardError.write(Data("pop3d: configuration error: \(error)\n".utf8))
        throw ExitCode(78)
    } catch let exit as ExitCode {
        throw exit
    } catch {
        FileHandle.standardError.write(Data("\(command): \(error) (run it again: copied messages are skipped)\n".utf8))
        throw ExitCode(75)
    }
}
