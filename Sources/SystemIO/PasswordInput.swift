#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Reading a password: from a file, standard input or a terminal. One reader for both ends (`pop3d user add`,
/// `pop3 fetch --password-prompt`, password files).
public enum PasswordInput {
    /// The longest line read from a terminal or a stream.
    public static let maximumLineLength = 4096
    /// The first line of `data`, without its line break: a trailing `"\n"`, `"\r\n"` (or a lone `"\r"` at the very
    /// end) is removed, nothing else — spaces are part of the password.
    ///
    /// Returns `nil` for empty input (no line at all) or bytes that are not valid UTF-8.
    public static func firstLine(of data: [UInt8]) -> String? {
        guard !data.isEmpty else { return nil }
        var line = data[...]
        if let lf = line.firstIndex(of: UInt8(ascii: "\n")) {
            line = line[..<lf]
        }
        if line.last == UInt8(ascii: "\r") {
            line = line.dropLast()
        }
        return String(validating: line, as: UTF8.self)
    }

    /// One line from `fd`, up to its LF (or `maximumLineLength` bytes, or the end). When `fd` is a terminal, `prompt`
    /// is written to `promptFD` first and echo is off while the line is typed (the newline is still echoed).
    public static func readLine(from fd: Int32, prompt: String, promptFD: Int32) throws(FileSystemError) -> [UInt8] {
        var saved = termios()
        let isTerminal = isatty(fd) == 1 && tcgetattr(fd, &saved) == 0
        if isTerminal {
            try? FileSystem.write(promptFD, Array(prompt.utf8), path: "<prompt>")
            var silent = saved
            silent.c_lflag &= ~tcflag_t(ECHO)
            silent.c_lflag |= tcflag_t(ECHONL)
            _ = tcsetattr(fd, TCSAFLUSH, &silent)
        }
        defer { if isTerminal { _ = tcsetattr(fd, TCSAFLUSH, &saved) } }
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < Self.maximumLineLength {
            let n = try withUnsafeMutableBytes(of: &byte) { raw throws(FileSystemError) in try FileSystem.read(fd, into: raw, path: "<password input>") }
            if n == 0 { break }
            line.append(byte)
            if byte == UInt8(ascii: "\n") { break }
        }
        return line
    }
}
