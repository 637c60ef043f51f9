/// A parsed passwd-file in Dovecot's format.
///
/// ```
/// user:password:uid:gid:gecos:home:shell:extra_fields
/// ```
///
/// Every field after the password is optional (`user:{PLAIN}x` is a complete line). Empty (or whitespace-only)
/// lines and comments (`#`, optionally after spaces or tabs) are ignored; a trailing CR is ignored (CRLF files
/// work). `uid`/`gid` are decimal numbers or empty (Dovecot also accepts system user names there; we do not).
/// The 8th column is the rest of the line — it may contain `:` (`userdb_mail=maildir:~/Maildir`) — split at spaces
/// into ``UserRecord/extraFields``. When a user appears twice the first line wins, as in Dovecot; later lines are
/// listed in ``duplicates``. User names must be non-empty and free of `:`, whitespace and control characters.
///
/// - SeeAlso: [Dovecot passwd-file](https://doc.dovecot.org/main/core/config/auth/databases/passwd_file.html)
public struct PasswdFile: Sendable {
    public var records: [UserRecord]
    /// Later lines for a user already defined earlier: ignored, as Dovecot ignores them (it logs an error).
    public var duplicates: [Duplicate]

    public struct Duplicate: Sendable, Equatable {
        public var name: String
        /// 1-based line number of the ignored line.
        public var line: Int
    }

    private var index: [String: Int]

    public init(records: [UserRecord]) {
        self.records = []
        self.duplicates = []
        self.index = [:]
        for record in records where self.index[record.name] == nil {
            self.index[record.name] = self.records.count
            self.records.append(record)
        }
    }

    public func record(named name: String) -> UserRecord? {
        self.index[name].map { self.records[$0] }
    }

    /// Parses `text`. `path` is only used in errors, which name it and the 1-based line number.
    public static func parse(_ text: String, path: String) throws -> PasswdFile {
        try Self.parse(bytes: Array(text.utf8), path: path)
    }

    /// Parses raw file bytes; a line that is not UTF-8 is malformed.
    public static func parse(bytes: [UInt8], path: String) throws -> PasswdFile {
        var file = PasswdFile(records: [])
        for (number, line) in Self.lines(of: bytes).enumerated() {
            guard let record = try Self.parseLine(line.content, path: path, lineNumber: number + 1) else { continue }
            if file.index[record.name] != nil {
                file.duplicates.append(Duplicate(name: record.name, line: number + 1))
            } else {
                file.index[record.name] = file.records.count
                file.records.append(record)
            }
        }
        return file
    }

    // MARK: - Lines

    /// One physical line of the file. `content` excludes the line break (LF, and a CR before it);
    /// `raw` includes it, so an editor can write untouched lines back byte for byte.
    struct Line {
        var raw: ArraySlice<UInt8>
        var content: ArraySlice<UInt8>
    }

    static func lines(of bytes: [UInt8]) -> [Line] {
        var result: [Line] = []
        var start = bytes.startIndex
        while start < bytes.endIndex {
            let lf = bytes[start...].firstIndex(of: UInt8(ascii: "\n"))
            let end = lf.map { $0 + 1 } ?? bytes.endIndex
            var content = bytes[start..<(lf ?? bytes.endIndex)]
            if content.last == UInt8(ascii: "\r") { content = content.dropLast() }
            result.append(Line(raw: bytes[start..<end], content: content))
            start = end
        }
        return result
    }

    /// `nil` for a line that holds no entry (blank or comment).
    static func parseLine(_ bytes: ArraySlice<UInt8>, path: String, lineNumber: Int) throws -> UserRecord? {
        func malformed(_ reason: String) -> PasswdFileError {
            .malformed(path: path, line: lineNumber, reason: reason)
        }
        let firstVisible = bytes.first { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\t") }
        if firstVisible == nil || firstVisible == UInt8(ascii: "#") { return nil }
        guard let line = String(validating: bytes, as: UTF8.self) else { throw malformed("not valid UTF-8") }

        // user:password:uid:gid:gecos:home:shell:extra_fields — the last column keeps any further ':'.
        let fields = line.split(separator: ":", maxSplits: 7, omittingEmptySubsequences: false).map(String.init)
        let name = fields[0]
        if let problem = UserName.problem(name) { throw malformed(problem) }
        guard fields.count >= 2 else { throw malformed("missing ':' and password field after the user name") }

        func number(_ index: Int, _ what: String) throws -> UInt32? {
            guard index < fields.count, !fields[index].isEmpty else { return nil }
            let text = fields[index]
            guard text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
                let value = UInt32(text)
            else { throw malformed("\(what) is not a decimal number in 0...\(UInt32.max)") }
            return value
        }
        let uid = try number(2, "uid")
        let gid = try number(3, "gid")
        let home = fields.count > 5 && !fields[5].isEmpty ? fields[5] : nil
        let extra = fields.count > 7 ? fields[7].split(separator: " ").map(String.init) : []
        return UserRecord(name: name, passwordField: fields[1], uid: uid, gid: gid, home: home, extraFields: extra)
    }
}

extension PasswdFile: CustomStringConvertible {
    public var description: String {
        "PasswdFile(\(self.records.count) users: \(self.records.map(\.name)))"
    }
}
