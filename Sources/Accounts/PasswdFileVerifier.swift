import Logging
import SASL
import NIOCore
import NIOPosix
import Synchronization
import SystemIO

/// A ``CredentialVerifier`` backed by a passwd-file on disk.
///
/// - Every call stats the file (cheap) and re-reads it when `st_ino`, `st_size` or `st_mtim` changed, so
///   `pop3d user add` takes effect without a restart. If the changed file does not parse, the last good copy keeps
///   being served and one error is logged per bad version of the file.
/// - `crypt_r` runs on `threadPool`, never on the caller's thread (an event loop), and at most
///   `maximumConcurrentHashes` hashes run at once, so a login flood queues here instead of occupying every thread
///   of a shared pool. The pool must be started.
/// - An unknown user, a locked account and a wrong password all cost one hash of the kind most users in the file
///   have (by default a SHA512-CRYPT dummy), and all answer `.failure`.
public final class PasswdFileVerifier: CredentialVerifier {
    public let path: String
    private let threadPool: NIOThreadPool
    private let logger: Logger
    private let limiter: ConcurrencyLimiter
    private let current: Mutex<Snapshot>
    /// Held for the whole of a reload, so concurrent callers read a changed file once; remembers the last failure
    /// so a broken file is logged once, not on every login.
    private let reloadState: Mutex<ReloadFailure?>
    /// SCRAM iterations for dummy exchanges and for keys derived from `{PLAIN}` fields (`auth.scram_iterations`).
    private let scramIterations: Int
    /// Keys the salts of dummy exchanges and of `{PLAIN}`-derived keys; the daemon keeps it in `state_dir` so that
    /// salts stay the same across restarts, as stored ones do (random per process otherwise).
    private let scramSecret: [UInt8]

    private struct Snapshot: Sendable {
        var file: PasswdFile
        var fingerprint: FileFingerprint
        /// Timing cover and SCRAM dummies derived from the records.
        var credentials: StoredCredentials

        init(file: PasswdFile, fingerprint: FileFingerprint) {
            self.file = file
            self.fingerprint = fingerprint
            self.credentials = StoredCredentials(records: file.records)
        }
    }

    private struct ReloadFailure {
        /// `nil` when the file could not even be stat'ed.
        var fingerprint: FileFingerprint?
        var error: PasswdFileError
    }

    /// Reads and parses `path`; throws ``PasswdFileError`` if it is unreadable or malformed.
    public init(
        path: String,
        threadPool: NIOThreadPool,
        logger: Logger,
        maximumConcurrentHashes: Int = System.coreCount,
        scramIterations: Int = SCRAMDefaults.iterations,
        scramSecret: [UInt8]? = nil
    ) throws {
        self.path = path
        self.scramIterations = max(SCRAMDefaults.minimumIterations, scramIterations)
        self.scramSecret = scramSecret ?? (SCRAM.randomSalt() + SCRAM.randomSalt())
        self.threadPool = threadPool
        self.logger = logger
        self.limiter = ConcurrencyLimiter(limit: max(1, maximumConcurrentHashes))
        let (file, fingerprint) = try Self.load(path: path)
        self.current = Mutex(Snapshot(file: file, fingerprint: fingerprint))
        self.reloadState = Mutex(nil)
        self.logLoaded(file)
    }

    /// Uses `NIOThreadPool.singleton`.
    public convenience init(
        path: String,
        logger: Logger,
        maximumConcurrentHashes: Int = System.coreCount,
        scramIterations: Int = SCRAMDefaults.iterations
    ) throws {
        try self.init(
            path: path,
            threadPool: .singleton,
            logger: logger,
            maximumConcurrentHashes: maximumConcurrentHashes,
            scramIterations: scramIterations
        )
    }

    /// Re-reads the file if it changed since the last successful read. Returns whether a new version was loaded.
    /// Throws (and logs, once per bad version) if the file cannot be read or parsed; the last good copy stays in use.
    /// Call it on SIGHUP to report a broken file to the operator; logins call it implicitly.
    @discardableResult
    public func reloadIfChanged() throws -> Bool {
        let seen: FileFingerprint?
        do {
            seen = try FileSystem.status(self.path).map(FileFingerprint.init)
        } catch {
            seen = nil
        }
        if let seen, self.current.withLock({ $0.fingerprint == seen }) { return false }

        return try self.reloadState.withLock { (failure: inout ReloadFailure?) throws(PasswdFileError) -> Bool in
            // Someone else may have loaded this version while we waited for the lock.
            if let seen, self.current.withLock({ $0.fingerprint == seen }) { return false }
            if let failure, failure.fingerprint == seen { throw failure.error }
            do throws(PasswdFileError) {
                let (file, fingerprint) = try Self.load(path: self.path)
                let snapshot = Snapshot(file: file, fingerprint: fingerprint)
                self.current.withLock { $0 = snapshot }
                failure = nil
                self.logLoaded(file)
                return true
            } catch {
                failure = ReloadFailure(fingerprint: seen, error: error)
                self.logger.error(
                    "passwd-file changed but cannot be loaded; still serving the last good copy",
                    metadata: ["path": "\(self.path)", "error": "\(error)"]
                )
                throw error
            }
        }
    }

    /// The account named `name` in the records currently served (after reloading a changed file).
    public func record(named name: String) -> UserRecord? {
        self.refresh()
        return self.current.withLock { $0.file.record(named: name) }
    }

    /// The records currently served (after reloading a changed file).
    public func records() -> [UserRecord] {
        self.refresh()
        return self.current.withLock { $0.file.records }
    }

    public func authenticate(user: String, password: String) async throws -> AuthenticationResult {
        try await self.limiter.withPermit {
            try await self.threadPool.runIfActive { [self] in
                self.authenticateNow(user: user, password: password)
            }
        }
    }

    public func lookup(user: String) async throws -> UserRecord? {
        try await self.threadPool.runIfActive { [self] in
            self.refresh()
            return self.current.withLock { $0.file.record(named: user) }
        }
    }

    public func scramKeys(user: String, algorithm: SCRAMAlgorithm) async throws -> SCRAMLookup {
        try await self.limiter.withPermit {
            try await self.threadPool.runIfActive { [self] in
                self.refresh()
                let (record, credentials) = self.current.withLock { ($0.file.record(named: user), $0.credentials) }
                return credentials.scramLookup(user: user, record: record, algorithm: algorithm, iterations: self.scramIterations, secret: self.scramSecret)
            }
        }
    }

    // MARK: - Internals

    /// Blocking: stats (maybe reads) the file and runs crypt_r. Only on the thread pool.
    private func authenticateNow(user: String, password: String) -> AuthenticationResult {
        self.refresh()
        let (record, credentials) = self.current.withLock { ($0.file.record(named: user), $0.credentials) }
        return credentials.authenticate(password: password, record: record)
    }

    private func refresh() {
        do {
            try self.reloadIfChanged()
        } catch {
            // Logged by reloadIfChanged; keep serving the last good copy.
        }
    }

    private func logLoaded(_ file: PasswdFile) {
        self.logger.info("passwd-file loaded", metadata: ["path": "\(self.path)", "users": "\(file.records.count)"])
        let argon2Users = file.records.filter { PasswordHash.splitScheme($0.passwordField).scheme?.hasPrefix("ARGON2") == true }
        if let first = argon2Users.first, let reason = Argon2.unavailableReason {
            self.logger.error(
                "passwd-file has ARGON2 hashes that cannot be checked: those users cannot log in",
                metadata: ["path": "\(self.path)", "users": "\(argon2Users.count)", "first": "\(String(reflecting: first.name))", "reason": "\(reason)"]
            )
        }
        for duplicate in file.duplicates {
            self.logger.warning(
                "passwd-file defines a user more than once; the first line wins",
                metadata: [
                    "path": "\(self.path)", "user": "\(String(reflecting: duplicate.name))",
                    "line": "\(duplicate.line)",
                ]
            )
        }
    }

    private static func load(path: String) throws(PasswdFileError) -> (PasswdFile, FileFingerprint) {
        let contents: (bytes: [UInt8], status: stat)
        do {
            contents = try FileSystem.readFileAndStatus(path)
        } catch {
            throw .unreadable(path: path, reason: error.reason)
        }
        do {
            return (try PasswdFile.parse(bytes: contents.bytes, path: path), FileFingerprint(contents.status))
        } catch let error as PasswdFileError {
            throw error
        } catch {
            throw .malformed(path: path, line: 0, reason: "\(error)")
        }
    }



}
