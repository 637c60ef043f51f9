import Logging
import NIOCore
import PostgresNIO

/// The authentication penalty kept in PostgreSQL, so that one address gets the same number of attempts behind any
/// number of nodes: the same rule as the in-process table (`AuthPenaltyTable`: waits of 0, 2, 4, 8, 15 s after
/// 0, 1, 2, 3, 4+ distinct wrong credentials; attempts spaced one wait apart; forgotten an hour after the last
/// failure), each step one atomic statement. The table is bounded (`maximumEntries`, oldest dropped) and cleans
/// itself of expired rows.
public struct SharedPenalty: Sendable {
    public let database: MailDatabase
    public let maximumEntries: Int

    public init(database: MailDatabase, maximumEntries: Int = 100_000) {
        self.database = database
        self.maximumEntries = maximumEntries
    }

    /// The key every node digests wrong credentials with (made by `pop3d db migrate`).
    public func digestKey() async throws -> [UInt8] {
        try await self.database.withConnection("penalty key") { connection in
            var key: [UInt8] = []
            for try await value in try await connection.query("SELECT value FROM pop3d_secrets WHERE name = 'penalty'", logger: self.database.logger)
                .decode(ByteBuffer.self)
            {
                key = Array(value.readableBytesView)
            }
            guard key.count >= 16 else { throw DatabaseError("no penalty key in pop3d_secrets: run `pop3d db migrate`") }
            return key
        }
    }

    /// How long an attempt from `address` starting now must wait, and the failures counted for it.
    public func admit(_ address: String) async throws -> (wait: Duration, failures: Int) {
        try await self.database.withConnection("penalty") { connection in
            var result: (wait: Duration, failures: Int) = (.zero, 0)
            for (failures, seconds) in try await connection.rows(Statements.PenaltyAdmit(address: address), logger: self.database.logger) {
                result = (.milliseconds(Int64(max(0, seconds) * 1000)), Int(failures))
            }
            return result
        }
    }

    /// Addresses with failures in the last hour, most recent first (at most 1,000): address, failures, seconds since
    /// the last failure.
    public func listing() async throws -> [(address: String, failures: Int, seconds: Int64)] {
        try await self.database.withConnection("penalty list") { connection in
            var out: [(address: String, failures: Int, seconds: Int64)] = []
            let rows = try await connection.query(
                """
                SELECT address, failures, extract(epoch FROM now() - last_failure)::int8 FROM auth_penalty
                WHERE last_failure > now() - interval '1 hour' AND failures > 0 ORDER BY last_failure DESC LIMIT 1000
                """,
                logger: self.database.logger
            )
            for try await (address, failures, seconds) in rows.decode((String, Int32, Int64).self) {
                out.append((address, Int(failures), seconds))
            }
            return out
        }
    }

    /// Forgets an address's failures. Returns whether there were any.
    public func clear(_ address: String) async throws -> Bool {
        try await self.database.withConnection("penalty clear") { connection in
            var removed = false
            for try await _ in try await connection.query("DELETE FROM auth_penalty WHERE address = \(address) RETURNING 1", logger: self.database.logger) {
                removed = true
            }
            return removed
        }
    }

    /// Records a failed login from `address`; `credential` is a digest of user and password (never the password):
    /// a retry of one of the last four wrong credentials does not count again.
    public func recordFailure(_ address: String, credential: String) async throws {
        let maximum = self.maximumEntries
        try await self.database.withConnection("penalty") { connection in
            try await connection.query(
                """
                INSERT INTO auth_penalty AS p (address, failures, last_failure, next_slot, credentials)
                VALUES (\(address), 1, now(), now(), ARRAY[\(credential)::text])
                ON CONFLICT (address) DO UPDATE SET
                    failures = CASE WHEN p.last_failure < now() - interval '1 hour' THEN 1
                                    WHEN \(credential) = ANY(p.credentials) THEN p.failures
                                    ELSE p.failures + 1 END,
                    credentials = CASE WHEN p.last_failure < now() - interval '1 hour' THEN ARRAY[\(credential)::text]
                                       WHEN \(credential) = ANY(p.credentials) THEN p.credentials
                                       ELSE (p.credentials || \(credential)::text)[greatest(1, cardinality(p.credentials) - 2):] END,
                    next_slot = CASE WHEN p.last_failure < now() - interval '1 hour' THEN now() ELSE p.next_slot END,
                    last_failure = now()
                """,
                logger: self.database.logger
            )
            // Now and then, expired rows go, and the table is cut to its bound (the oldest first).
            if Int.random(in: 0..<64) == 0 {
                try await connection.query("DELETE FROM auth_penalty WHERE last_failure < now() - interval '1 hour'", logger: self.database.logger)
                try await connection.query(
                    """
                    DELETE FROM auth_penalty WHERE address IN
                        (SELECT address FROM auth_penalty ORDER BY last_failure DESC OFFSET \(maximum))
                    """,
                    logger: self.database.logger
                )
            }
        }
    }
}

/// LOGIN-DELAY (RFC 2449 §6.5) across nodes: each account's last login in its row (`accounts.last_login`), so a user
/// behind a load balancer cannot log in once per node within the delay.
public struct SharedLoginTimes: Sendable {
    public let database: MailDatabase

    public init(database: MailDatabase) {
        self.database = database
    }

    /// Whether `user` last logged in at least `delay` ago (or never).
    public func mayLogIn(_ user: String, delay: Duration) async throws -> Bool {
        let seconds = Double(delay.components.seconds)
        return try await self.database.withConnection("login delay") { connection in
            var recent = false
            let rows = try await connection.query(
                "SELECT coalesce(last_login > now() - \(seconds) * interval '1 second', false) FROM accounts WHERE name = \(user)",
                logger: self.database.logger
            )
            for try await value in rows.decode(Bool.self) { recent = value }
            return !recent
        }
    }

    public func recordLogin(_ user: String) async throws {
        try await self.database.withConnection("login delay") { connection in
            try await connection.query("UPDATE accounts SET last_login = now() WHERE name = \(user)", logger: self.database.logger)
        }
    }
}
