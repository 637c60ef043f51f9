import Accounts
import ArgumentParser
import Foundation
import MailStore
import POP3Server

/// `pop3d deliver NAME --config FILE < message`: local delivery for MTAs.
///
/// Exit status follows sysexits(3): 0 once the message is durable (tmp, fsync, rename, directory fsync),
/// 67 (EX_NOUSER) for an unknown user, 75 (EX_TEMPFAIL) for anything the MTA should retry.
struct Deliver: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Deliver one message from standard input into a user's Maildir.")

    @Argument var name: String
    @OptionGroup var options: ConfigOption
    @Option(name: .customLong("max-size"), help: "Refuse messages larger than this many bytes (exit 75 is not used for this: 73, EX_CANTCREAT).")
    var maximumSize: Int?

    static let exitNoUser: Int32 = 67
    static let exitTemporaryFailure: Int32 = 75
    static let exitCannotCreate: Int32 = 73

    func run() async throws {
        func fail(_ message: String, _ code: Int32) -> ExitCode {
            FileHandle.standardError.write(Data("pop3d deliver: \(message)\n".utf8))
            return ExitCode(code)
        }
        let configuration: ServerConfiguration
        let passwd: PasswdFile
        do {
            configuration = try await self.options.load()
            passwd = try PasswdFile.parse(String(contentsOfFile: configuration.passwdFile, encoding: .utf8), path: configuration.passwdFile)
        } catch {
            throw fail("configuration: \(error)", Self.exitTemporaryFailure)
        }
        guard let record = passwd.record(named: self.name) else {
            throw fail("unknown user \(self.name)", Self.exitNoUser)
        }
        let path: String
        do {
            path = try MaildirLocator(template: configuration.maildirTemplate).path(for: record)
        } catch {
            throw fail("no maildir for \(self.name): \(error)", Self.exitTemporaryFailure)
        }
        do {
            let file = try MaildirDelivery.deliver(readingFrom: STDIN_FILENO, toMaildir: path, maximumSize: self.maximumSize)
            FileHandle.standardError.write(Data("pop3d deliver: delivered to \(self.name) as \(file)\n".utf8))
        } catch let error as MaildropError where error == .permanent("message too large") {
            throw fail("\(error)", Self.exitCannotCreate)
        } catch {
            throw fail("delivery failed, nothing was stored: \(error)", Self.exitTemporaryFailure)
        }
    }
}
