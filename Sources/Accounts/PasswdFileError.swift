/// Errors reading, parsing and editing a passwd-file. None of them carries a password or a password field, and
/// user names are printed escaped, so a description is always safe to log.
public enum PasswdFileError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file cannot be opened, stat'ed or read; `reason` is the `strerror` text.
    case unreadable(path: String, reason: String)
    /// A line is not a valid passwd-file entry. `line` is 1-based.
    case malformed(path: String, line: Int, reason: String)
    /// `add` of a user that is already in the file.
    case userExists(String)
    /// `passwd`/`del` of a user that is not in the file.
    case noSuchUser(String)
    /// Empty, or containing `:`, whitespace or a control character.
    case invalidUserName(String)
    /// A field the editor would write cannot be represented (e.g. a home directory containing `:`).
    case invalidField(field: String, reason: String)
    /// A password the editor cannot store (e.g. `{PLAIN}` with `:` or a line break). Never contains the password.
    case invalidPassword(reason: String)
    /// Taking the `<path>.lock` lock failed.
    case lockFailed(path: String, reason: String)
    /// Writing the new file (temp file, fsync, rename, directory fsync) failed. The original is untouched.
    case writeFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason):
            return "cannot read passwd-file \(path): \(reason)"
        case .malformed(let path, let line, let reason):
            return "\(path):\(line): \(reason)"
        case .userExists(let name):
            return "user \(Self.quoted(name)) already exists"
        case .noSuchUser(let name):
            return "no such user \(Self.quoted(name))"
        case .invalidUserName(let name):
            return "invalid user name \(Self.quoted(name)): \(UserName.problem(name) ?? "invalid")"
        case .invalidField(let field, let reason):
            return "invalid \(field): \(reason)"
        case .invalidPassword(let reason):
            return "invalid password: \(reason)"
        case .lockFailed(let path, let reason):
            return "cannot lock \(path): \(reason)"
        case .writeFailed(let path, let reason):
            return "cannot write passwd-file \(path): \(reason)"
        }
    }

    /// A user name is user input: escape it, so control characters cannot forge log lines.
    private static func quoted(_ name: String) -> String {
        String(reflecting: name)
    }
}

/// The user-name rule shared by the parser, the verifier and the editor.
package enum UserName {
    /// Why `name` is not a valid user name, or `nil` if it is.
    package static func problem(_ name: String) -> String? {
        if name.isEmpty { return "user name is empty" }
        for scalar in name.unicodeScalars {
            if scalar == ":" { return "user name contains ':'" }
            if scalar.properties.generalCategory == .control { return "user name contains a control character" }
            if scalar.properties.isWhitespace { return "user name contains whitespace" }
        }
        return nil
    }

    package static func isValid(_ name: String) -> Bool { Self.problem(name) == nil }
}
