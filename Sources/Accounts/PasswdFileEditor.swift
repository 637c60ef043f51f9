import SASL
import SystemIO
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Edits a passwd-file for `pop3d user add|passwd|del|list`.
///
/// Every change takes an exclusive `flock` on `<path>.lock` (a separate file, so the lock survives the rename),
/// re-reads and validates the file (a malformed file is never rewritten), and replaces it atomically: a temp file
/// in the same directory with the original's mode and owner (0600 for a new file), `fsync`, `rename`, `fsync` of
/// the directory. Lines the edit does not touch — comments, blank lines, other users — are written back byte for
/// byte; `passwd` replaces only the password column of the user's line. A symlinked path edits its target.
/// Readers (``PasswdFileVerifier``) never lock: they always see the old or the new file, never a mix.
public struct PasswdFileEditor: Sendable {
    public let path: String

    public init(path: String) {
        self.path = path
    }

    /// Appends `user`. Fails with ``PasswdFileError/userExists(_:)`` if the user is already in the file; creates the
    /// file (mode 0600) if there is none.
    public func add(
        user: String,
        password: String,
        scheme: PasswordScheme = .sha512Crypt,
        iterations: Int = SCRAMDefaults.iterations,
        uid: UInt32? = nil,
        gid: UInt32? = nil,
        home: String? = nil
    ) throws {
        try self.add(user: user, passwordField: Self.makeField(password: password, scheme: scheme, iterations: iterations), uid: uid, gid: gid, home: home)
    }

    /// Appends `user` with a stored password field as it is (`pop3d export maildir` moves accounts with their
    /// hashes). A field that would break the line format is refused.
    public func add(user: String, passwordField field: String, uid: UInt32? = nil, gid: UInt32? = nil, home: String? = nil) throws {
        guard UserName.isValid(user) else { throw PasswdFileError.invalidUserName(user) }
        if let home { try Self.validateHome(home) }
        guard !field.contains(where: { $0 == ":" || $0 == "\n" || $0 == "\r" }) else {
            throw PasswdFileError.invalidPassword(reason: "a stored field with ':' or a line break does not fit a passwd-file line")
        }
        var fields = [user, field, uid.map(String.init) ?? "", gid.map(String.init) ?? "", "", home ?? ""]
        while fields.last == "" { fields.removeLast() }
        let newLine = Array(fields.joined(separator: ":").utf8) + [UInt8(ascii: "\n")]

        try self.withExclusiveLock { target in
            let existing = try Self.read(target, missingIsEmpty: true)
            let file = try PasswdFile.parse(bytes: existing?.bytes ?? [], path: self.path)
            guard file.record(named: user) == nil else { throw PasswdFileError.userExists(user) }
            var output = existing?.bytes ?? []
            if let last = output.last, last != UInt8(ascii: "\n") { output.append(UInt8(ascii: "\n")) }
            output += newLine
            try Self.replace(target, with: output, like: existing?.st)
        }
    }

    /// Replaces the password of `user` (the line that counts: the first one), leaving every other column as it was.
    public func setPassword(user: String, password: String, scheme: PasswordScheme = .sha512Crypt, iterations: Int = SCRAMDefaults.iterations) throws {
        guard UserName.isValid(user) else { throw PasswdFileError.invalidUserName(user) }
        let field = Array(try Self.makeField(password: password, scheme: scheme, iterations: iterations).utf8)
        try self.withExclusiveLock { target in
            let existing = try Self.read(target, missingIsEmpty: false)!
            let lines = try Self.parsedLines(existing.bytes, path: self.path)
            guard let line = lines.first(where: { $0.name == user })?.line else {
                throw PasswdFileError.noSuchUser(user)
            }
            // content is a prefix of raw (same indices): user ':' password [':' rest] [CR] LF
            let colon = line.content.firstIndex(of: UInt8(ascii: ":"))!
            let passwordEnd = line.content[(colon + 1)...].firstIndex(of: UInt8(ascii: ":")) ?? line.content.endIndex
            var output: [UInt8] = []
            output.reserveCapacity(existing.bytes.count + field.count)
            output += existing.bytes[..<(colon + 1)]
            output += field
            output += existing.bytes[passwordEnd...]
            try Self.replace(target, with: output, like: existing.st)
        }
    }

    /// Removes every line of `user` (also ignored duplicates, which would otherwise take its place).
    public func delete(user: String) throws {
        try self.withExclusiveLock { target in
            let existing = try Self.read(target, missingIsEmpty: false)!
            let lines = try Self.parsedLines(existing.bytes, path: self.path)
            guard lines.contains(where: { $0.name == user }) else { throw PasswdFileError.noSuchUser(user) }
            var output: [UInt8] = []
            output.reserveCapacity(existing.bytes.count)
            for entry in lines where entry.name != user {
                output += entry.line.raw
            }
            try Self.replace(target, with: output, like: existing.st)
        }
    }

    /// The user names in file order (the first definition of each). Takes no lock: renames are atomic.
    public func list() throws -> [String] {
        let existing = try Self.read(self.path, missingIsEmpty: false)!
        return try PasswdFile.parse(bytes: existing.bytes, path: self.path).records.map(\.name)
    }

    // MARK: - Internals

    private static func makeField(password: String, scheme: PasswordScheme, iterations: Int) throws -> String {
        let breaksTheFormat: Set<UInt8> = [UInt8(ascii: ":"), UInt8(ascii: "\n"), UInt8(ascii: "\r")]
        if scheme == .plain, password.utf8.contains(where: breaksTheFormat.contains) {
            throw PasswdFileError.invalidPassword(reason: "a {PLAIN} password cannot contain ':' or a line break")
        }
        return try StoredCredentials.field(password: password, scheme: scheme, iterations: iterations)
    }

    private static func validateHome(_ home: String) throws {
        guard home.hasPrefix("/") else {
            throw PasswdFileError.invalidField(field: "home", reason: "must be an absolute path")
        }
        guard !home.unicodeScalars.contains(where: { $0 == ":" || $0.properties.generalCategory == .control }) else {
            throw PasswdFileError.invalidField(field: "home", reason: "must not contain ':' or control characters")
        }
    }

    /// Every physical line with the user it defines (nil for comments and blank lines); throws if any is malformed.
    private static func parsedLines(_ bytes: [UInt8], path: String) throws -> [(line: PasswdFile.Line, name: String?)] {
        try PasswdFile.lines(of: bytes).enumerated().map { number, line in
            (line, try PasswdFile.parseLine(line.content, path: path, lineNumber: number + 1)?.name)
        }
    }

    private static func read(
        _ path: String,
        missingIsEmpty: Bool
    ) throws(PasswdFileError) -> (bytes: [UInt8], st: stat)? {
        do {
            let contents = try FileSystem.readFileAndStatus(path)
            return (contents.bytes, contents.status)
        } catch {
            if missingIsEmpty && error.errno == ENOENT { return nil }
            throw .unreadable(path: path, reason: error.reason)
        }
    }

    /// Runs `body` with the file's real path (symlinks resolved) while holding `flock(LOCK_EX)` on `<path>.lock`.
    private func withExclusiveLock<Result>(_ body: (String) throws -> Result) throws -> Result {
        let lockPath = self.path + ".lock"
        let fd: Int32
        do {
            fd = try FileSystem.open(lockPath, O_RDWR | O_CREAT, mode: 0o600)
        } catch {
            throw PasswdFileError.lockFailed(path: lockPath, reason: error.reason)
        }
        defer { _ = close(fd) }  // closing the descriptor releases the lock
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else {
                throw PasswdFileError.lockFailed(path: lockPath, reason: FileSystem.fail("flock", path).reason)
            }
        }
        var target = self.path
        if let resolved = realpath(self.path, nil) {
            target = String(cString: resolved)
            free(resolved)
        }
        return try body(target)
    }

    /// Atomically replaces `path` with `bytes`: temp file, same mode/owner as `original` (0600 if none), fsync,
    /// rename, fsync the directory. On failure the temp file is removed and `path` is untouched.
    private static func replace(_ path: String, with bytes: [UInt8], like original: stat?) throws(PasswdFileError) {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        var template = Array("\(directory == "/" ? "" : directory)/.\(base).XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }  // mode 0600
        guard fd >= 0 else { throw .writeFailed(path: path, reason: FileSystem.fail("mkstemp", path).reason) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        let temporary = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        var renamed = false
        var closed = false
        defer {
            if !closed { _ = close(fd) }
            if !renamed { _ = unlink(temporary) }
        }
        do throws(FileSystemError) {
            let mode = original.map { $0.st_mode & 0o7777 } ?? 0o600
            guard fchmod(fd, mode) == 0 else { throw FileSystem.fail("fchmod", path) }
            if let original {
                // Keeps a file edited by root owned by the mail user; an unprivileged editor cannot and need not.
                _ = fchown(fd, original.st_uid, original.st_gid)
            }
            try FileSystem.write(fd, bytes, path: temporary)
            try FileSystem.sync(fd, path: temporary)
            closed = true
            guard close(fd) == 0 else { throw FileSystem.fail("close", path) }
            guard rename(temporary, path) == 0 else { throw FileSystem.fail("rename", path) }
            renamed = true
            let directoryFD = try FileSystem.open(directory, O_RDONLY | O_DIRECTORY)
            defer { _ = close(directoryFD) }
            try FileSystem.sync(directoryFD, path: directory)
        } catch {
            throw .writeFailed(path: path, reason: error.reason)
        }
    }
}
