import ArgumentParser
import Foundation
import Logging
import MailStore
import NIOPosix
import POP3Server
import Privileges

#if canImport(Glibc)
import Glibc
#endif

/// `pop3d privsep`: the privileged helper `pop3d serve` starts (as root) before dropping privileges. Internal: it
/// talks to its parent on descriptor 3 and refuses to run otherwise.
struct PrivilegedHelperCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "privsep",
        abstract: "Internal: the privileged helper of `pop3d serve` (starts mail workers as each account's uid/gid).",
        shouldDisplay: false
    )

    @Option(name: .customLong("passwd-file")) var passwdFile: String
    @Option(name: .customLong("first-valid-uid")) var firstValidUID: UInt32

    func run() throws {
        try requireChannel(type: SOCK_SEQPACKET, command: "privsep")
        LoggingSystem.bootstrap(StreamLogHandler.standardError)
        let logger = Logger(label: "pop3d.privsep")
        do {
            try PrivilegeSeparation.runHelper(
                socket: 3,
                passwdFile: self.passwdFile,
                firstValidUID: self.firstValidUID,
                executable: try PrivilegeSeparation.currentExecutable(),
                logger: logger
            )
        } catch {
            logger.critical("privileged helper failed: \(error)")
            throw ExitCode(70)
        }
    }
}
