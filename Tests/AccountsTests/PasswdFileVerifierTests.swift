@testable import Accounts
import Logging
import NIOPosix
import Synchronization
import Testing

struct PasswdFileVerifierTests {
    static let alice = "alice:{PLAIN}wonderland:1000:1000::/home/alice"
    /// "correct horse", made by Python's crypt module.
    static let bob =
        "bob:{SHA512-CRYPT}$6$Edt/H9MlCbhTK5b7$TBQqxW17HrxWFYuizKBizWtCz7JpABxzAvLNidLN0j8peNDP9gPPQpAkkb5q3zSTa4TJrhH6NYHIeYvJNZJjR.:1000:1000"
    static let locked = "mallory:!{SHA512-CRYPT}$6$x$y"

    private func withVerifier(
        _ contents: String,
        limit: Int = 2,
        _ body: (PasswdFileVerifier, String, LogCapture) async throws -> Void
    ) async throws {
        try await withTemporaryDirectory { directory in
            let path = "\(directory)/passwd"
            try writeFile(path, contents)
            let pool = NIOThreadPool(numberOfThreads: 2)
            pool.start()
            let logs = LogCapture()
            do {
                let verifier = try PasswdFileVerifier(
                    path: path,
                    threadPool: pool,
                    logger: logs.logger,
                    maximumConcurrentHashes: limit
                )
                try await body(verifier, path, logs)
            } catch {
                try await pool.shutdownGracefully()
                throw error
            }
            try await pool.shutdownGracefully()
        }
    }

    @Test func authenticatesKnownUsers() async throws {
        try await self.withVerifier("# users\n\(Self.alice)\n\(Self.bob)\n") { verifier, _, _ in
            let alice = try await verifier.authenticate(user: "alice", password: "wonderland")
            #expect(
                alice == .success(UserRecord(
                    name: "alice", passwordField: "{PLAIN}wonderland", uid: 1000, gid: 1000, home: "/home/alice"
                ))
            )
            let bobResult = try await verifier.authenticate(user: "bob", password: "correct horse")
            guard case .success(let bob) = bobResult else {
                Issue.record("bob should log in")
                return
            }
            #expect(bob.name == "bob")
            #expect(try await verifier.lookup(user: "bob")?.uid == 1000)
            #expect(try await verifier.lookup(user: "nobody") == nil)
            #expect(verifier.records().map(\.name) == ["alice", "bob"])
        }
    }

    @Test func unknownUserAndWrongPasswordAreIndistinguishable() async throws {
        try await self.withVerifier("\(Self.bob)\n\(Self.locked)\n") { verifier, _, _ in
            let wrongPassword = try await verifier.authenticate(user: "bob", password: "wrong horse")
            let unknownUser = try await verifier.authenticate(user: "bobby", password: "correct horse")
            let lockedUser = try await verifier.authenticate(user: "mallory", password: "")
            let invalidName = try await verifier.authenticate(user: "bob\r\n", password: "correct horse")
            let caseMismatch = try await verifier.authenticate(user: "BOB", password: "correct horse")
            #expect(wrongPassword == .failure)
            #expect(unknownUser == .failure)
            #expect(lockedUser == .failure)
            #expect(invalidName == .failure)
            #expect(caseMismatch == .failure)
        }
    }

    @Test func unknownUsersSpendAHashOfTheCommonKind() throws {
        let sha512 = try PasswdFile.parse("\(Self.bob)\n\(Self.alice)\n", path: "p")
        #expect(StoredCredentials.costReference(sha512.records) == StoredCredentials.dummySHA512Crypt)
        let plainOnly = try PasswdFile.parse("\(Self.alice)\n", path: "p")
        #expect(StoredCredentials.costReference(plainOnly.records) == StoredCredentials.dummySHA512Crypt)
        let bcrypt = try PasswdFile.parse(
            """
            a:{BLF-CRYPT}$2y$05$/VHpNVmHGqW7ENCw2zPI6.4UbFvcFlYKyQcLM1u.ODwJ6i9D3daAq
            b:{BLF-CRYPT}$2y$05$/VHpNVmHGqW7ENCw2zPI6.4UbFvcFlYKyQcLM1u.ODwJ6i9D3daAq
            \(Self.bob)
            """,
            path: "p"
        )
        #expect(StoredCredentials.costReference(bcrypt.records).hasPrefix("{BLF-CRYPT}$2y$05$"))
        #expect(StoredCredentials.costClass("$6$rounds=9000$s$h") == "$6$rounds=9000$")
        #expect(StoredCredentials.costClass("{CRYPT}$y$j9T$s$h") == "$y$j9T$")
        #expect(StoredCredentials.costClass("{PLAIN}x") == nil)
        #expect(StoredCredentials.costClass("{SCRAM-SHA-256}4096,a,b,c") == "SCRAM-SHA-256:4096")
        #expect(StoredCredentials.costClass("{PBKDF2}$1$salt$5000$00") == "PBKDF2:5000")
        #expect(StoredCredentials.costClass("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$s$h") == "$argon2id$v=19$m=65536,t=3,p=1$")
        #expect(StoredCredentials.costClass("{SSHA512}x") == "SSHA512")
        let scramUsers = try PasswdFile.parse("a:{SCRAM-SHA-256}4096,x,y,z\nb:{SCRAM-SHA-256}4096,x,y,z\n\(Self.bob)\n", path: "p")
        #expect(StoredCredentials.costReference(scramUsers.records).hasPrefix("{SCRAM-SHA-256}4096,"))
        #expect(PasswordHash.check(password: "x", against: StoredCredentials.dummySHA512Crypt) == .mismatch)
    }

    /// SCRAM lookups: a SCRAM user's own keys, keys derived for {PLAIN}, and for everyone else dummy keys with a
    /// stable salt that no proof matches.
    @Test func scramKeysForEveryKindOfUser() async throws {
        let scram = "carol@example.com:{SCRAM-SHA-256}4096,m1k6GC8TT2hPI103PqjDVg==,zEkVFdpS2QHklU2DDnnHYNWLLjLzkJ6ZA5BoSrUaanw=,VIohQ6klkNhv53s7MS16A09+zjLwQokFWX+nK7LDtn0="
        try await self.withVerifier("\(Self.bob)\n\(Self.alice)\n\(scram)\n") { verifier, _, _ in
            let carol = try await verifier.scramKeys(user: "carol@example.com", algorithm: .sha256)
            #expect(carol.record?.name == "carol@example.com")
            #expect(carol.keys.matches(password: "pencil"))
            #expect(try await verifier.authenticate(user: "carol@example.com", password: "pencil") != .failure)
            // SCRAM-SHA-1 from a SHA-256 field: dummy.
            #expect(try await verifier.scramKeys(user: "carol@example.com", algorithm: .sha1).record == nil)
            let bob = try await verifier.scramKeys(user: "bob", algorithm: .sha256)
            #expect(bob.record == nil)
            let ghost = try await verifier.scramKeys(user: "ghost", algorithm: .sha256)
            #expect(ghost.record == nil)
            #expect(try await verifier.scramKeys(user: "ghost", algorithm: .sha256).keys.salt == ghost.keys.salt)
            #expect(ghost.keys.iterations == bob.keys.iterations)
        }
    }

    @Test func reloadsWhenTheFileChanges() async throws {
        try await self.withVerifier("\(Self.alice)\n") { verifier, path, logs in
            setModificationTime(path, seconds: 1_700_000_000)
            #expect(try verifier.reloadIfChanged())
            #expect(try !verifier.reloadIfChanged())
            #expect(try await verifier.authenticate(user: "carol", password: "c") == .failure)

            // Same size, new mtime: still noticed.
            try writeFile(path, "\(Self.alice)\ncarol:{PLAIN}c\n")
            setModificationTime(path, seconds: 1_700_000_100)
            guard case .success = try await verifier.authenticate(user: "carol", password: "c") else {
                Issue.record("carol should be visible after the change")
                return
            }
            #expect(verifier.records().count == 2)

            // Replaced by rename (new inode), even with the old mtime.
            try writeFile(path + ".new", "carol:{PLAIN}c2\n")
            setModificationTime(path + ".new", seconds: 1_700_000_100)
            #expect(rename(path + ".new", path) == 0)
            #expect(try await verifier.authenticate(user: "alice", password: "wonderland") == .failure)
            #expect(try await verifier.authenticate(user: "carol", password: "c2") != .failure)
            #expect(logs.count(.error) == 0)
        }
    }

    @Test func aBrokenChangeKeepsTheLastGoodCopyAndLogsOnce() async throws {
        try await self.withVerifier("\(Self.alice)\n") { verifier, path, logs in
            try writeFile(path, "\(Self.alice)\nbadlinewithoutcolon\n")
            setModificationTime(path, seconds: 1_600_000_000)
            let reason = "missing ':' and password field after the user name"
            #expect(throws: PasswdFileError.malformed(path: path, line: 2, reason: reason)) {
                try verifier.reloadIfChanged()
            }
            for _ in 0..<3 {
                guard case .success = try await verifier.authenticate(user: "alice", password: "wonderland") else {
                    Issue.record("the last good copy should still be served")
                    return
                }
            }
            #expect(logs.count(.error) == 1)
            #expect(logs.all.contains { $0.level == .error && $0.text.contains("\(path):2") })

            // A deleted file: keep serving, one more error.
            #expect(unlink(path) == 0)
            #expect(throws: PasswdFileError.self) { try verifier.reloadIfChanged() }
            #expect(try await verifier.authenticate(user: "alice", password: "wonderland") != .failure)
            #expect(logs.count(.error) == 2)

            // Fixed: picked up again.
            try writeFile(path, "alice:{PLAIN}new\n")
            #expect(try await verifier.authenticate(user: "alice", password: "new") != .failure)
            #expect(try await verifier.authenticate(user: "alice", password: "wonderland") == .failure)
        }
    }

    @Test func logsNeverContainPasswordFields() async throws {
        try await self.withVerifier("\(Self.alice)\n\(Self.bob)\nalice:{PLAIN}second\n") { verifier, path, logs in
            _ = try await verifier.authenticate(user: "alice", password: "wonderland")
            _ = try await verifier.authenticate(user: "bob", password: "nope")
            try writeFile(path, "bob:{PLAIN}hunter2\nbroken\n")
            setModificationTime(path, seconds: 1)
            _ = try await verifier.authenticate(user: "bob", password: "hunter2")
            #expect(logs.count(.warning) == 1)  // the duplicate alice
            #expect(!logs.all.isEmpty)
            for entry in logs.all {
                for secret in ["wonderland", "second", "hunter2", "$6$", "{PLAIN}", "{SHA512-CRYPT}"] {
                    #expect(!entry.text.contains(secret), "\(entry.text)")
                }
            }
        }
    }

    @Test func unreadableFileAtInitThrows() throws {
        try withTemporaryDirectory { directory in
            let path = "\(directory)/missing"
            #expect(throws: PasswdFileError.self) {
                try PasswdFileVerifier(path: path, threadPool: .singleton, logger: Logger(label: "t"))
            }
            do {
                _ = try PasswdFileVerifier(path: path, threadPool: .singleton, logger: Logger(label: "t"))
            } catch let error as PasswdFileError {
                guard case .unreadable(let errorPath, let reason) = error else {
                    Issue.record("unexpected \(error)")
                    return
                }
                #expect(errorPath == path)
                #expect(reason.contains("No such file"))
            }
            try writeFile(path, "x y:z\n")
            #expect(throws: PasswdFileError.self) {
                try PasswdFileVerifier(path: path, threadPool: .singleton, logger: Logger(label: "t"))
            }
        }
    }

    @Test func hashingConcurrencyIsBounded() async throws {
        let hash = "{SHA256-CRYPT}$5$wOG7YA3ThDbS1Wle$emOykxJFYWvJWRTTVsoXKeu05CrJFv9sK32YwYx4H3A"
        let lines = (0..<8).map { "u\($0):\(hash)" }
        try await self.withVerifier(lines.joined(separator: "\n"), limit: 1) { verifier, _, _ in
            try await withThrowingTaskGroup(of: AuthenticationResult.self) { group in
                for index in 0..<16 {
                    group.addTask {
                        try await verifier.authenticate(user: "u\(index % 8)", password: "correct horse")
                    }
                }
                var successes = 0
                for try await result in group where result != .failure { successes += 1 }
                #expect(successes == 16)
            }
        }
    }
}

struct ConcurrencyLimiterTests {
    final class Counters: Sendable {
        let state = Mutex((running: 0, maximum: 0))
    }

    @Test(arguments: [1, 3])
    func neverExceedsTheLimit(_ limit: Int) async throws {
        let limiter = ConcurrencyLimiter(limit: limit)
        let counters = Counters()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<40 {
                group.addTask {
                    try await limiter.withPermit {
                        counters.state.withLock {
                            $0.running += 1
                            $0.maximum = max($0.maximum, $0.running)
                        }
                        try await Task.sleep(for: .milliseconds(1))
                        counters.state.withLock { $0.running -= 1 }
                    }
                }
            }
            try await group.waitForAll()
        }
        let final = counters.state.withLock { $0 }
        #expect(final.running == 0)
        #expect(final.maximum <= limit)
        #expect(final.maximum >= 1)
    }

    @Test func aCancelledWaiterLeavesTheQueue() async throws {
        let limiter = ConcurrencyLimiter(limit: 1)
        let (holding, holdingContinuation) = AsyncStream<Void>.makeStream()
        let (release, releaseContinuation) = AsyncStream<Void>.makeStream()
        let holder = Task {
            try await limiter.withPermit {
                holdingContinuation.yield()
                for await _ in release { break }
            }
        }
        for await _ in holding { break }
        let waiter = Task { try await limiter.withPermit { 42 } }
        try await Task.sleep(for: .milliseconds(20))
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
        releaseContinuation.yield()
        try await holder.value
        // The permit came back: a new caller gets it at once.
        #expect(try await limiter.withPermit { 7 } == 7)
    }
}
