import Accounts

/// Turns the `maildir` template into a user's Maildir path.
///
/// `%u` is the whole user name, `%n` the part before `@`, `%d` the part after it, `%%` a percent sign;
/// a leading `~/` is the user's home from the passwd-file. Names that could escape the mail root
/// (`/`, `..`, a leading `.`, control characters) are refused.
public struct MaildirLocator: Sendable {
    public var template: String

    public init(template: String) {
        self.template = template
    }

    public enum LocateError: Error, Equatable, CustomStringConvertible {
        case unsafeUserName
        case noHome
        public var description: String {
            switch self {
            case .unsafeUserName: "user name cannot be used in a path"
            case .noHome: "maildir uses ~/ but the passwd-file gives this user no absolute home"
            }
        }
    }

    public func path(for record: UserRecord) throws(LocateError) -> String {
        try self.path(user: record.name, home: record.home)
    }

    public func path(user: String, home: String?) throws(LocateError) -> String {
        guard Self.isSafe(user) else { throw .unsafeUserName }
        var template = Substring(self.template)
        var result = ""
        if template.hasPrefix("~/") {
            guard let home, home.hasPrefix("/") else { throw .noHome }
            result = home.hasSuffix("/") ? String(home.dropLast()) : home
            template = template.dropFirst()
        }
        let at = user.firstIndex(of: "@")
        let local = at.map { String(user[..<$0]) } ?? user
        let domain = at.map { String(user[user.index(after: $0)...]) } ?? ""
        var iterator = template.makeIterator()
        while let character = iterator.next() {
            guard character == "%" else {
                result.append(character)
                continue
            }
            switch iterator.next() {
            case "u": result += user
            case "n": result += local
            case "d": result += domain
            case "%": result += "%"
            case let other?: result += "%" + String(other)
            case nil: result += "%"
            }
        }
        return result
    }

    static func isSafe(_ name: String) -> Bool {
        !name.isEmpty && !name.hasPrefix(".") && !name.contains("/") && !name.contains("..")
            && !name.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }
    }
}
