import SystemIO
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Where an account's password comes from. Never the command line.
public enum PasswordSource: Sendable, Equatable {
    /// The first line of a file that only its owner (the current user) can read: mode 0600 or stricter.
    case file(String)
    /// The first line of the standard output of `/bin/sh -c COMMAND` (e.g. `pass show mail/work`); a non-zero exit
    /// status is an error.
    case command(String)
    /// Asked on `/dev/tty` with echo off.
    case prompt

    /// Reads the password. Trailing CR/LF are stripped; an empty password is an error.
    public func readPassword(prompt promptText: String = "Password: ") throws -> String {
        let password: String
        switch self {
        case .file(let path):
            password = try Self.readFile(path)
        case .command(let command):
            let result = try Subprocess.runShell(command, standardInput: nil, capture: .standardOutput)
            guard result.succeeded else {
                if let signal = result.signal {
                    throw PasswordError.commandFailed(command: command, status: 128 + signal)
                }
                throw PasswordError.commandFailed(command: command, status: result.exitStatus ?? -1)
            }
            password = Self.firstLine(result.output)
        case .prompt:
            password = try Self.readFromTerminal(promptText)
        }
        guard !password.isEmpty else { throw PasswordError.empty(source: self.description) }
        return password
    }

    /// Refuses files that are not regular, not owned by the current user, or readable/writable by group or others.
    public static func checkFilePermissions(_ path: String) throws {
        guard let st = try FileSystem.status(path) else { throw PasswordError.fileMissing(path: path) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw PasswordError.notRegularFile(path: path) }
        guard st.st_uid == getuid() else { throw PasswordError.wrongOwner(path: path) }
        guard st.st_mode & 0o077 == 0 else {
            throw PasswordError.tooOpen(path: path, mode: UInt32(st.st_mode & 0o777))
        }
    }

    static func readFile(_ path: String) throws -> String {
        try checkFilePermissions(path)
        guard let bytes = try FileSystem.readFile(path, limit: 65536) else { throw PasswordError.fileMissing(path: path) }
        return firstLine(bytes)
    }

    /// The first line without its line break; invalid UTF-8 reads as no password.
    static func firstLine(_ bytes: [UInt8]) -> String {
        PasswordInput.firstLine(of: bytes) ?? ""
    }

    static func readFromTerminal(_ promptText: String) throws -> String {
        let tty: Int32
        do {
            tty = try FileSystem.open("/dev/tty", O_RDWR | O_NOCTTY)
        } catch {
            throw PasswordError.noTerminal
        }
        defer { FileSystem.close(tty) }
        guard isatty(tty) == 1 else { throw PasswordError.noTerminal }
        let line = try PasswordInput.readLine(from: tty, prompt: promptText, promptFD: tty)
        return firstLine(line)
    }
}

extension PasswordSource: CustomStringConvertible {
    public var description: String {
        switch self {
        case .file(let path): return "password file \(path)"
        case .command(let command): return "password command '\(command)'"
        case .prompt: return "password prompt"
        }
    }
}

public enum PasswordError: Error, Sendable, Equatable, CustomStringConvertible {
    case fileMissing(path: String)
    case notRegularFile(path: String)
    case wrongOwner(path: String)
    case tooOpen(path: String, mode: UInt32)
    case commandFailed(command: String, status: Int32)
    case noTerminal
    case empty(source: String)

    public var description: String {
        switch self {
        case .fileMissing(let path):
            return "password file \(path) does not exist"
        case .notRegularFile(let path):
            return "password file \(path) is not a regular file"
        case .wrongOwner(let path):
            return "password file \(path) is not owned by the current user"
        case .tooOpen(let path, let mode):
            return "password file \(path) has mode \(String(mode, radix: 8, uppercase: false).leftPadded(4)); "
                + "it must not be accessible to group or others (chmod 600)"
        case .commandFailed(let command, let status):
            return "password command '\(command)' exited with status \(status)"
        case .noTerminal:
            return "no terminal to ask for the password; set password_file or password_command"
        case .empty(let source):
            return "empty password from the \(source)"
        }
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
