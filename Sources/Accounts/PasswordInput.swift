/// Reading a password from stdin or a password file (`demo-password`, `--password-file`).
public enum PasswordInput {
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
}
