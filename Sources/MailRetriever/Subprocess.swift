import SystemIO
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Runs `/bin/sh -c COMMAND` with posix_spawn (safe in a multi-threaded process), capturing one output stream.
enum Subprocess {
    enum Capture {
        /// stdout to a pipe we read; stderr inherited (password commands: gpg/pass may talk to the terminal).
        case standardOutput
        /// stderr to a pipe we read; stdout to /dev/null (MDA commands).
        case standardError
    }

    struct Result {
        /// The exit status, when the child exited.
        var exitStatus: Int32?
        /// The signal, when the child was killed by one.
        var signal: Int32?
        /// The first `limit` bytes of the captured stream.
        var output: [UInt8]
        /// The command ran past its deadline and was killed (with its process group).
        var timedOut = false

        var succeeded: Bool { exitStatus == 0 }

        /// The first line of the output, without CR/LF, control characters replaced.
        var firstLine: String {
            let line = output.prefix { $0 != UInt8(ascii: "\n") }
            var text = String(decoding: line, as: UTF8.self)
            while text.hasSuffix("\r") { text.removeLast() }
            return String(text.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : Character($0) })
        }
    }

    /// - Parameters:
    ///   - standardInput: a descriptor to become the child's stdin (its offset is shared), or nil to inherit ours.
    ///   - timeoutSeconds: kill the command and everything it started (its process group) after this long.
    static func runShell(
        _ command: String,
        standardInput: Int32?,
        capture: Capture,
        limit: Int = 65536,
        timeoutSeconds: Int? = nil
    ) throws -> Result {
        // A socket pair rather than a pipe: SOCK_CLOEXEC sets close-on-exec atomically (pipe2 is not imported), so
        // children that other threads spawn meanwhile never inherit the write end and hold our EOF back.
        var pipeFDs: [Int32] = [-1, -1]
        #if os(Linux)
            let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        #else
            let type = SOCK_STREAM
        #endif
        guard socketpair(AF_UNIX, type, 0, &pipeFDs) == 0 else {
            throw FileSystemError("socketpair", path: command, errno: errno)
        }
        #if !os(Linux)
            _ = fcntl(pipeFDs[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(pipeFDs[1], F_SETFD, FD_CLOEXEC)
        #endif
        let readEnd = pipeFDs[0]
        var writeEnd = pipeFDs[1]
        defer {
            FileSystem.close(readEnd)
            if writeEnd >= 0 { FileSystem.close(writeEnd) }
        }

        #if os(Linux)
            var actions = posix_spawn_file_actions_t()
            var attributes = posix_spawnattr_t()
        #else
            var actions: posix_spawn_file_actions_t?
            var attributes: posix_spawnattr_t?
        #endif
        posix_spawn_file_actions_init(&actions)
        posix_spawnattr_init(&attributes)
        defer {
            posix_spawn_file_actions_destroy(&actions)
            posix_spawnattr_destroy(&attributes)
        }
        if let standardInput {
            posix_spawn_file_actions_adddup2(&actions, standardInput, 0)
        }
        switch capture {
        case .standardOutput:
            posix_spawn_file_actions_adddup2(&actions, writeEnd, 1)
        case .standardError:
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_adddup2(&actions, writeEnd, 2)
        }
        // The child starts with default signal handling and no blocked signals, whatever ours are
        // (a server process often ignores SIGPIPE, and ignored signals survive exec).
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD] { sigaddset(&defaults, signal) }
        var mask = sigset_t()
        sigemptyset(&mask)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &mask)
        // Its own process group, so that a deadline can stop the shell and whatever it started.
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP))

        let arguments: [UnsafeMutablePointer<CChar>?] = ["/bin/sh", "-c", command].map { (text: String) in strdup(text)
        }
        defer { arguments.forEach { free($0) } }
        var argv: [UnsafeMutablePointer<CChar>?] = arguments + [nil]
        var pid: pid_t = 0
        #if canImport(Darwin)
            let environment = _NSGetEnviron().pointee
        #else
            let environment = environ
        #endif
        let spawned = posix_spawn(&pid, "/bin/sh", &actions, &attributes, &argv, environment)
        guard spawned == 0 else { throw MailRetrieverError.spawnFailed(command: command, errno: spawned) }
        FileSystem.close(writeEnd)
        writeEnd = -1

        // Drain the pipe to EOF (so the child never blocks on it), keeping the first `limit` bytes. Past the deadline
        // the process group is killed; its end of the pipe then closes.
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        let deadline = timeoutSeconds.map { ContinuousClock.now + .seconds($0) }
        var timedOut = false
        while true {
            if let deadline, !timedOut {
                let left = deadline - ContinuousClock.now
                let milliseconds = max(0, Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
                var descriptor = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&descriptor, 1, milliseconds)
                if ready == 0 {
                    timedOut = true
                    _ = kill(-pid, SIGKILL)
                    continue
                }
                if ready < 0 && errno == EINTR { continue }
            }
            let n = (try? chunk.withUnsafeMutableBytes { try FileSystem.read(readEnd, into: $0, path: command) }) ?? 0
            if n == 0 { break }
            if output.count < limit { output.append(contentsOf: chunk[0..<min(n, limit - output.count)]) }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { throw FileSystemError("waitpid", path: command, errno: errno) }
        }
        let terminatingSignal = status & 0x7F
        if terminatingSignal == 0 {
            return Result(exitStatus: (status >> 8) & 0xFF, signal: nil, output: output, timedOut: timedOut)
        }
        return Result(exitStatus: nil, signal: terminatingSignal, output: output, timedOut: timedOut)
    }
}
