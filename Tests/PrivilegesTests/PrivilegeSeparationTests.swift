import Accounts
import CPrivSep
import Foundation
import Logging
import MailStore
import Testing

@testable import Privileges

#if canImport(Glibc)
import Glibc
#endif

@Suite("Privilege separation")
struct PrivilegeSeparationTests {
    let records = [
        UserRecord(name: "alice", passwordField: "{PLAIN}x", uid: 2001, gid: 2001),
        UserRecord(name: "sys", passwordField: "{PLAIN}x", uid: 100, gid: 100),
        UserRecord(name: "toor", passwordField: "{PLAIN}x", uid: 0, gid: 0),
        UserRecord(name: "wheel", passwordField: "{PLAIN}x", uid: 3000, gid: 0),
        UserRecord(name: "nouid", passwordField: "{PLAIN}x"),
        UserRecord(name: "maxuid", passwordField: "{PLAIN}x", uid: UInt32.max, gid: 3000),
        UserRecord(name: "maxgid", passwordField: "{PLAIN}x", uid: 3000, gid: UInt32.max),
    ]

    func refusal(_ user: String, _ uid: UInt32, _ gid: UInt32) -> String? {
        do {
            try PrivilegeSeparation.check(user: user, owner: MailOwner(uid: uid, gid: gid), records: self.records, firstValidUID: 500)
            return nil
        } catch {
            return error.description
        }
    }

    /// The helper starts a worker only for an account whose passwd-file uid/gid are exactly the ones asked for,
    /// never root's and never below first_valid_uid: a compromised pop3d cannot ask for any other identity.
    @Test func helperStartsWorkersOnlyForListedUnprivilegedAccounts() {
        #expect(self.refusal("alice", 2001, 2001) == nil)
        #expect(self.refusal("alice", 2002, 2001) == "uid/gid do not match the passwd-file")
        #expect(self.refusal("alice", 2001, 0) == "uid/gid do not match the passwd-file")
        #expect(self.refusal("mallory", 2001, 2001) == "no such account")
        #expect(self.refusal("nouid", 2001, 2001) == "uid/gid do not match the passwd-file")
        #expect(self.refusal("sys", 100, 100)?.contains("first_valid_uid 500") == true)
        #expect(self.refusal("toor", 0, 0)?.contains("never root") == true)
        #expect(self.refusal("wheel", 3000, 0)?.contains("not allowed") == true)
        // (uid_t)-1 means "no change" to setuid(2): it must never reach the spawn, from the passwd-file or not.
        #expect(self.refusal("maxuid", UInt32.max, 3000)?.contains("not allowed") == true)
        #expect(self.refusal("maxgid", 3000, UInt32.max)?.contains("not allowed") == true)
        let refused = PrivilegeSeparation.withCStrings(["/bin/true"]) { argv in pop3_spawn("/bin/true", argv, 1, uid_t.max, 3000, 0) }
        #expect(refused == -1 && errno == EINVAL)
        #expect(PrivilegeSeparation.withCStrings(["/bin/true"]) { argv in pop3_spawn("/bin/true", argv, 1, 0, 0, 0) } == -1)
    }

    /// What pop3d sends the helper is bounded and checked before anything else: a longer request, or one that is
    /// not `"<uid> <gid> <user>"`, is refused without looking up an account or starting a worker.
    @Test func helperRequestsAreBoundedAndParsed() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("PrivSep-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(FileManager.default.createFile(atPath: dir + "/users", contents: Data("a:{PLAIN}x:3000:3000\n".utf8)))
        var logger = Logger(label: "PrivilegeSeparationTests")
        logger.logLevel = .critical
        let accounts = try PasswdFileVerifier(path: dir + "/users", logger: logger)
        func refusal(_ request: [UInt8]) -> String? {
            let outcome = PrivilegeSeparation.spawnWorker(
                request: request, accounts: accounts, firstValidUID: 500, executable: "/nonexistent", logger: logger
            )
            switch outcome {
            case .success(let fd):
                close(fd)
                return nil
            case .failure(let error):
                return error.description
            }
        }
        let long = Array("3000 3000 ".utf8) + [UInt8](repeating: UInt8(ascii: "a"), count: PrivilegeSeparation.maximumMessageLength)
        #expect(refusal(long) == "request longer than 1024 bytes")
        #expect(refusal(Array("3000 a".utf8)) == "malformed request")
        #expect(refusal(Array("x 3000 a".utf8)) == "malformed request")
        #expect(refusal([0xFF, 0x20]) == "request is not UTF-8")
    }

    /// The helper trusts the passwd-file to name identities only while root alone can change it and every folder
    /// above it (as sshd's StrictModes): else a compromised pop3d could add an account for anybody's uid. Every rule
    /// runs unprivileged too: the test trusts its own uid where the helper trusts root's.
    @Test func passwdFileMustBeRootsAlone() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("PrivSep-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/users"
        #expect(FileManager.default.createFile(atPath: file, contents: Data("a:{PLAIN}x:3000:3000\n".utf8)))
        let me = geteuid()
        chmod(dir, 0o755)
        chmod(file, 0o644)
        #expect(PrivilegeSeparation.untrustedReason(file, trustedOwner: me) == nil)
        chmod(file, 0o664)
        #expect(PrivilegeSeparation.untrustedReason(file, trustedOwner: me)?.contains("writable by its owner only") == true)
        chmod(file, 0o644)
        if me == 0 {
            chown(file, 3000, 3000)
            #expect(PrivilegeSeparation.untrustedReason(file, trustedOwner: 0)?.contains("owner uid 3000") == true)
            chown(file, 0, 0)
        } else {
            // The helper's own rule: a file of ours is not root's.
            #expect(PrivilegeSeparation.untrustedReason(file, trustedOwner: 0)?.contains("must belong to root") == true)
            #expect(PrivilegeSeparation.untrustedReason(file, trustedOwner: me + 1)?.contains("owner uid \(me)") == true)
        }
        chmod(dir, 0o777)  // a folder others can write to (no sticky bit): they could replace the file
        #expect(PrivilegeSeparation.untrustedReason(file, trustedOwner: me)?.contains(dir) == true)
        chmod(dir, 0o1777)  // sticky, like /tmp: others cannot replace the owner's file
        #expect(PrivilegeSeparation.untrustedReason(file, trustedOwner: me) == nil)
        #expect(PrivilegeSeparation.untrustedReason(dir + "/missing", trustedOwner: me)?.hasPrefix("cannot check") == true)
    }

    /// `pop3_spawn` hands the child exactly one extra descriptor, as 3, and closes every other one.
    @Test func spawnedChildGetsOnlyItsChannel() throws {
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        // A descriptor the child must not inherit, even without close-on-exec.
        let leaked = open("/dev/null", O_RDONLY)
        defer { close(leaked) }
        let script = "ls /proc/self/fd | sort -n | tr '\\n' ' ' >&3"
        let pid = PrivilegeSeparation.withCStrings(["/bin/sh", "-c", script]) { argv in
            pop3_spawn("/bin/sh", argv, 0, 0, 0, pair[1])
        }
        close(pair[1])
        #expect(pid > 0)
        var output = [UInt8](repeating: 0, count: 256)
        var total = 0
        while true {
            let count = output.withUnsafeMutableBytes { read(pair[0], $0.baseAddress! + total, $0.count - total) }
            if count <= 0 { break }
            total += count
        }
        close(pair[0])
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        // 0-2, the channel as 3, and the descriptor `ls` itself opens on /proc/self/fd.
        let listed = String(decoding: output[0..<total], as: UTF8.self).split(separator: " ").compactMap { Int($0) }
        #expect(listed.count == 5 && listed.prefix(4) == [0, 1, 2, 3], "\(listed)")
    }

    @Test func descriptorsTravelWithTheirMessage() throws {
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        defer { close(pair[0]); close(pair[1]) }
        let file = open("/proc/self/status", O_RDONLY)
        let sent = Array("ok".utf8).withUnsafeBytes { pop3_send_with_fd(pair[0], $0.baseAddress, $0.count, file) }
        close(file)
        #expect(sent == 2)
        var bytes = [UInt8](repeating: 0, count: 16)
        var received: Int32 = -1
        let count = bytes.withUnsafeMutableBytes { pop3_receive_with_fd(pair[1], $0.baseAddress, $0.count, &received) }
        #expect(count == 2)
        #expect(received >= 0)
        var first = [UInt8](repeating: 0, count: 5)
        #expect(read(received, &first, 5) == 5)
        #expect(String(decoding: first, as: UTF8.self) == "Name:")
        #expect(fcntl(received, F_GETFD) & FD_CLOEXEC != 0, "received descriptors are close-on-exec")
        close(received)
    }
}
