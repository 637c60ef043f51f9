import ArgumentParser
import Foundation
import POP3Server
import SystemIO

/// `pop3d deliver NAME --config FILE < message`: local delivery for MTAs (`LocalDelivery`).
///
/// Exit status follows sysexits(3): 0 once the message is durable (tmp, fsync, rename, directory fsync),
/// 67 (EX_NOUSER) for an unknown user, 73 (EX_CANTCREAT) over `--max-size`, 77 (EX_NOPERM) over the account's
/// quota (as `dovecot-lda -e`), 75 (EX_TEMPFAIL) for anything the MTA should retry.
struct Deliver: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Deliver one message from standard input into a user's Maildir.")

    @Argument var name: String
    @OptionGroup var options: ConfigOption
    @Option(name: .customLong("max-size"), help: "Refuse messages larger than this many bytes (exit 75 is not used for this: 73, EX_CANTCREAT).")
    var maximumSize: Int?

    static func exitStatus(_ failure: LocalDelivery.Failure) -> Int32 {
        switch failure {
        case .unknownUser: 67
        case .tooLarge: 73
        case .quotaExceeded: 77
        case .temporary: 75
        }
    }

    func run() throws {
        let failure: LocalDelivery.Failure
        do {
            let options = self.options
            let configuration = try runBlocking { try await options.load() }
            let file = try LocalDelivery(configuration: configuration).deliver(
                user: self.name,
                readingFrom: STDIN_FILENO,
                maximumSize: self.maximumSize
            )
            FileHandle.standardError.write(Data("pop3d deliver: delivered to \(self.name) as \(file)\n".utf8))
            return
        } catch let error as LocalDelivery.Failure {
            failure = error
        } catch {
            failure = .temporary("configuration: \(error)")
        }
        FileHandle.standardError.write(Data("pop3d deliver: \(failure)\n".utf8))
        throw ExitCode(Self.exitStatus(failure))
    }
}
