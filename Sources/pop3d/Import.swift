import ArgumentParser
import Foundation
import Logging
import MailRetriever
import POP3Client
import POP3Server
import SystemIO

/// `pop3d import pop3s://USER@HOST[:PORT] --user LOCAL --password-file F --config FILE [--ca-file PEM] [--verify]`:
/// moves a user in from another POP3 server without any client downloading its mail again (`MaildropImporter`).
struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy a remote POP3 maildrop into a local account (Maildir or PostgreSQL), keeping each message's UIDL.",
        discussion: """
            The remote is left unchanged (no DELE). Run it again to resume after an interruption: nothing is copied \
            twice. --verify compares the two listings (count, sizes, UIDLs) afterwards and exits 1 on any difference.
            """
    )

    @Argument(help: "pop3s://USER@HOST[:PORT] (or pop3://… with --starttls)") var source: String
    @Option(help: "The local account (in the passwd-file) to import into.") var user: String
    @Option(name: .customLong("password-file"), help: "A file (mode 0600) whose first line is the remote password.")
    var passwordFile: String
    @OptionGroup var options: ConfigOption
    @Option(name: .customLong("ca-file"), help: "Trust these PEM certificates for the remote instead of the system store.")
    var caFile: String?
    @Flag(help: "Use STLS with a pop3:// URL.") var starttls = false
    @Flag(help: "Compare the remote and local listings afterwards; exit 1 on any difference.") var verify = false

    func run() throws {
        let url: POP3URL
        let security: ConnectionSecurity
        let password: String
        do {
            url = try POP3URL.parse(self.source)
            security = try url.security(starttls: self.starttls, insecurePlaintext: false)
            // Read before root is dropped: the file may be root's own.
            password = try PasswordSource.file(self.passwordFile).readPassword()
        } catch {
            FileHandle.standardError.write(Data("pop3d import: \(error)\n".utf8))
            throw ExitCode(64)  // EX_USAGE
        }
        let options = self.options
        let configuration: ServerConfiguration
        do {
            configuration = try runBlocking { try await options.load() }
        } catch {
            FileHandle.standardError.write(Data("pop3d import: configuration error: \(error)\n".utf8))
            throw ExitCode(78)
        }
        var client = POP3ClientConfiguration(host: url.host, port: url.port, security: security, trust: self.caFile.map { .caFile($0) } ?? .system)
        client.pipelineWindow = 16
        var logger = Logger(label: "pop3d-import")
        logger.logLevel = .warning
        let target: ImportTarget
        do {
            // As root, for a Maildir: from here on the process runs as the account's mail owner, as `pop3d deliver` does.
            target = try ImportTarget.open(configuration, user: self.user, logger: logger)
        } catch {
            FileHandle.standardError.write(Data("pop3d import: \(error)\n".utf8))
            throw ExitCode(Deliver.exitStatus(error))
        }
        let importer = MaildropImporter(destination: target.destination, client: client, logger: logger)
        let remoteUser = url.user, verify = self.verify
        let (report, differences): (MaildropImporter.Report, [MaildropImporter.Difference])
        do {
            (report, differences) = try runBlocking { try await target.run { try await importer.run(user: remoteUser, password: password, verify: verify) } }
        } catch {
            FileHandle.standardError.write(Data("pop3d import: \(error) (what was copied stays; run again to resume)\n".utf8))
            throw ExitCode(75)  // EX_TEMPFAIL
        }
        print("imported \(report.copied) messages (\(report.octets) bytes) into \(target.description); \(report.alreadyThere) already here, \(report.resumed) completed from an interrupted run")
        if verify {
            if differences.isEmpty {
                print("verify: the listings match")
            } else {
                for difference in differences { print("verify: \(difference)") }
                print("verify: \(differences.count) differences")
                throw ExitCode(1)
            }
        }
    }
}
