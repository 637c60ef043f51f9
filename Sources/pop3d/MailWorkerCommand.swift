import ArgumentParser
import Foundation
import Logging
import MailStore
import NIOPosix
import POP3Server
import Privileges
import SystemIO

#if canImport(Glibc)
import Glibc
#endif

/// `pop3d mail-worker`: serves one maildrop session, as the account's uid/gid, for `pop3d serve` on descriptor 3.
struct MailWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mail-worker",
        abstract: "Internal: opens one account's maildrop as that account (started by the privileged helper).",
        shouldDisplay: false
    )

    func run() throws {
        try requireChannel(type: SOCK_STREAM, command: "mail-worker")
        // pop3d decides when a session ends (it closes the socket); a signal to the whole group must not cut one short.
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        signal(SIGHUP, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        LoggingSystem.bootstrap(StreamLogHandler.standardError)
        var logger = Logger(label: "pop3d.mail-worker")
        logger[metadataKey: "pid"] = "\(getpid())"
        let provider = MaildirProvider(threadPool: .singleton, logger: logger, indexCacheCapacity: 0)
        let workerLogger = logger
        let clean = try runBlocking { await MaildropWorker.serve(socket: 3, provider: provider, logger: workerLogger) }
        if !clean { throw ExitCode(70) }
    }
}

/// Both internal commands are started with a Unix socket of `type` on descriptor 3; run by hand, they say so.
func requireChannel(type: __socket_type, command: String) throws {
    var actual: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    guard getsockopt(3, SOL_SOCKET, SO_TYPE, &actual, &length) == 0, actual == Int32(type.rawValue) else {
        FileHandle.standardError.write(Data("pop3d \(command): internal command, started by `pop3d serve` only\n".utf8))
        throw ExitCode(64)
    }
}
