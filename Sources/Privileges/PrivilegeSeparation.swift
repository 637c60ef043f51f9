import Accounts
import CPrivSep
import Logging
import MailStore
import NIOPosix
import POP3Core
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Mail files accessed with each account's own uid/gid (issue 4, "Privileges").
///
/// `pop3d serve` started as root binds its ports, then starts this helper (`pop3d privsep`, still root) and drops
/// to its configured user. The helper does one thing: on request, it checks an account against the passwd-file and
/// starts a mail worker (`pop3d mail-worker`) as that account's uid/gid, handing pop3d one end of a socket pair.
/// pop3d itself never regains root; the most a compromised pop3d can ask for is a worker for an account listed in
/// the passwd-file with a uid of at least `first_valid_uid` (what Dovecot's master process allows its auth process).
///
/// Protocol on the helper's socket (SOCK_SEQPACKET, one request and one reply at a time): the request is
/// `"<uid> <gid> <user>"`; the reply is `"ok"` with the worker's socket attached (SCM_RIGHTS), or `"error: …"`.
public enum PrivilegeSeparation {
    /// Dovecot's default `first_valid_uid`: accounts below it (system users) never get a worker.
    public static let defaultFirstValidUID: UInt32 = 500

    /// Longest request (`"<uid> <gid> <user>"`) or reply on the helper's socket; a longer request is refused.
    static let maximumMessageLength = 1024

    /// The privileged helper's loop, on `socket` (descriptor 3 of `pop3d privsep`). Returns when pop3d closes its end.
    public static func runHelper(socket: Int32, passwdFile: String, firstValidUID: UInt32, executable: String, logger: Logger) throws {
        // Children are reaped by the kernel; SIGINT/SIGTERM (a terminal's Ctrl-C, a service manager's stop) are for
        // pop3d, which ends this helper by closing the socket once its sessions are done.
        signal(SIGCHLD, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        signal(SIGHUP, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        let accounts = try PasswdFileVerifier(path: passwdFile, threadPool: .singleton, logger: logger)
        // One byte more than allowed, so that a longer request shows (a datagram is cut to the buffer silently).
        var request = [UInt8](repeating: 0, count: Self.maximumMessageLength + 1)
        while true {
            let count = request.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
            if count == 0 { return }
            if count < 0 {
                if errno == EINTR { continue }
                throw HelperError(description: "recv: \(String(cString: strerror(errno)))")
            }
            let outcome = Self.spawnWorker(
                request: Array(request[0..<count]),
                accounts: accounts,
                firstValidUID: firstValidUID,
                executable: executable,
                logger: logger
            )
            let (reply, descriptor): (String, Int32) = switch outcome {
            case .success(let descriptor): ("ok", descriptor)
            case .failure(let error): ("error: \(error.description)", -1)
            }
            let sent = Array(reply.utf8).withUnsafeBytes { pop3_send_with_fd(socket, $0.baseAddress, $0.count, descriptor) }
            if descriptor >= 0 { close(descriptor) }
            if sent < 0 { return }
        }
    }

    struct HelperError: Error, CustomStringConvertible {
        var description: String
    }

    /// Checks one request and starts its worker; returns pop3d's end of the worker's socket.
    static func spawnWorker(
        request: [UInt8],
        accounts: PasswdFileVerifier,
        firstValidUID: UInt32,
        executable: String,
        logger: Logger
    ) -> Result<Int32, HelperError> {
        guard request.count <= Self.maximumMessageLength else {
            return .failure(HelperError(description: "request longer than \(Self.maximumMessageLength) bytes"))
        }
        guard let text = String(validating: request, as: UTF8.self) else { return .failure(HelperError(description: "request is not UTF-8")) }
        let parts = text.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, let uid = UInt32(parts[0]), let gid = UInt32(parts[1]) else {
            return .failure(HelperError(description: "malformed request"))
        }
        let user = String(parts[2])
        do throws(HelperError) {
            if let reason = Self.untrustedReason(accounts.path, trustedOwner: 0) { throw HelperError(description: reason) }
            try Self.check(user: user, owner: MailOwner(uid: uid, gid: gid), records: accounts.records(), firstValidUID: firstValidUID)
        } catch {
            logger.error("mail worker refused", metadata: ["user": "\(logEscaped(user))", "reason": "\(error.description)"])
            return .failure(error)
        }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            return .failure(HelperError(description: "socketpair: \(String(cString: strerror(errno)))"))
        }
        let arguments = [executable, "mail-worker"]
        let pid = Self.withCStrings(arguments) { argv in pop3_spawn(Self.ownExecutable, argv, 1, uid, gid, pair[1]) }
        close(pair[1])
        guard pid > 0 else {
            close(pair[0])
            return .failure(HelperError(description: "fork: \(String(cString: strerror(errno)))"))
        }
        logger.debug("mail worker started", metadata: ["user": "\(logEscaped(user))", "pid": "\(pid)", "uid": "\(uid)"])
        return .success(pair[0])
    }

    /// A worker may run as `owner` for `user` only if the passwd-file gives `user` exactly that uid and gid, and
    /// neither is root's nor a system account's.
    static func check(user: String, owner: MailOwner, records: [UserRecord], firstValidUID: UInt32) throws(HelperError) {
        guard let record = records.first(where: { $0.name == user }) else { throw HelperError(description: "no such account") }
        guard record.uid == owner.uid, record.gid == owner.gid else {
            throw HelperError(description: "uid/gid do not match the passwd-file")
        }
        guard Self.allows(owner, firstValidUID: firstValidUID) else {
            throw HelperError(description: "uid \(owner.uid) / gid \(owner.gid) not allowed (first_valid_uid \(firstValidUID); never root)")
        }
    }

    /// The one rule for identities mail is accessed as (mail workers, `pop3d deliver` as root): never root's uid or
    /// gid, never a system account below `first_valid_uid`, never (uid_t)-1, which setuid(2) reads as "no change".
    public static func allows(_ owner: MailOwner, firstValidUID: UInt32) -> Bool {
        owner.uid != 0 && owner.gid != 0 && owner.uid >= firstValidUID && owner.uid != UInt32.max && owner.gid != UInt32.max
    }

    /// Why the passwd-file cannot be trusted to name the identities workers run as, or nil: it and every folder
    /// above it must belong to root (or `trustedOwner`) and be writable by nobody else (a folder writable by others
    /// only with the sticky bit), so that the unprivileged pop3d cannot add an account for somebody else's uid (as
    /// sshd's StrictModes). The helper passes 0: root alone; tests pass their own uid to run every rule unprivileged.
    public static func untrustedReason(_ passwdFile: String, trustedOwner: uid_t) -> String? {
        // The real file, symbolic links resolved, so that every folder on the way to it is checked.
        guard let resolved = realpath(passwdFile, nil) else { return "cannot check \(passwdFile): \(String(cString: strerror(errno)))" }
        var path = String(cString: resolved)
        free(resolved)
        var isFile = true
        while true {
            var info = stat()
            guard stat(path, &info) == 0 else { return "cannot check \(path): \(String(cString: strerror(errno)))" }
            let writableByOthers = info.st_mode & 0o022 != 0
            let sticky = info.st_mode & mode_t(S_ISVTX) != 0
            if (info.st_uid != 0 && info.st_uid != trustedOwner) || (writableByOthers && (isFile || !sticky)) {
                let owner = trustedOwner == 0 ? "root" : "uid \(trustedOwner) or root"
                return "\(path) must belong to \(owner) and be writable by its owner only (owner uid \(info.st_uid), mode \(String(info.st_mode & 0o7777, radix: 8)))"
            }
            guard path != "/", let slash = path.lastIndex(of: "/") else { return nil }
            path = slash == path.startIndex ? "/" : String(path[..<slash])
            isFile = false
        }
    }

    static func withCStrings<T>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> T) -> T {
        var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
        pointers.append(nil)
        defer { for pointer in pointers { free(pointer) } }
        return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
    }

    /// What the helper and the workers are started from: this very executable file, even if an upgrade replaced or
    /// removed its path since, so that pop3d, its helper and its workers always speak the same protocol.
    static let ownExecutable = "/proc/self/exe"

    /// This program's path, shown as the helper's and workers' argv[0] (`ps`).
    public static func currentExecutable() throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { throw HelperError(description: "cannot find this executable: \(String(cString: strerror(errno)))") }
        return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
