import Crypto
import Foundation
import MailStorePostgres
import NIOConcurrencyHelpers
import NIOCore

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
public struct CIDRNetwork: Sendable, Equatable, CustomStringConvertible {
    let bytes: [UInt8]
    let prefixLength: Int

    public init?(parsing text: String) {
        let parts = text.split(separator: "/", maxSplits: 1)
        guard let address = try? SocketAddress(ipAddress: String(parts[0]), port: 0), let bytes = Self.bytes(of: address) else {
            return nil
        }
        let maximum = bytes.count * 8
        let length = parts.count == 2 ? Int(parts[1]) : maximum
        guard let length, (0...maximum).contains(length) else { return nil }
        self.bytes = bytes
        self.prefixLength = length
    }

    static func bytes(of address: SocketAddress) -> [UInt8]? {
        switch address {
        case .v4(let v4): withUnsafeBytes(of: v4.address.sin_addr) { Array($0) }
        case .v6(let v6): withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
        default: nil
        }
    }

    public func contains(_ address: SocketAddress?) -> Bool {
        guard let address, var candidate = Self.bytes(of: address) else { return false }
        // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) counts as IPv4.
        if candidate.count == 16, self.bytes.count == 4, candidate[0..<10].allSatisfy({ $0 == 0 }), candidate[10] == 0xFF, candidate[11] == 0xFF {
            candidate = Array(candidate[12...])
        }
        guard candidate.count == self.bytes.count else { return false }
        var remaining = self.prefixLength
        for (a, b) in zip(candidate, self.bytes) where remaining > 0 {
            let bits = min(8, remaining)
            let mask: UInt8 = bits == 8 ? 0xFF : ~(0xFF >> UInt8(bits))
            if a & mask != b & mask { return false }
            remaining -= bits
        }
        return true
    }

    public var description: String {
        let address = self.bytes.count == 4
            ? self.bytes.map(String.init).joined(separator: ".")
            : stride(from: 0, to: 16, by: 2).map { String(UInt16(self.bytes[$0]) << 8 | UInt16(self.bytes[$0 + 1]), radix: 16) }.joined(separator: ":")
        return "\(address)/\(self.prefixLength)"
    }
}

/// The authentication penalty per client address (IPv4 address, IPv6 /48), as Dovecot's auth_penalty.
///
/// After failed logins from an address, its next login attempts wait 2, 4, 8, then 15 s (the cap). The wait
/// happens *before* the credentials are checked, so it says nothing about whether they are right: a success
/// and a failure from the same address take the same time. Retrying the same wrong password does not raise the
/// penalty (a mail client retrying with a stale password is not an attack). Attempts from one address are
/// spaced one penalty apart, so parallel connections cannot bypass it. Failures are forgotten an hour after the
/// last one; the table is bounded.
///
/// Pure: every call takes the current time, so tests drive it with a fake clock.
public struct AuthPenaltyTable: Sendable {
    public static let delays: [Duration] = [.zero, .seconds(2), .seconds(4), .seconds(8), .seconds(15)]
    public static let forgetAfter: Duration = .seconds(3600)
    /// Distinct wrong credentials remembered per address (to recognise a retry of the same one).
    public static let rememberedCredentials = 4

    public typealias Instant = ContinuousClock.Instant

    struct Entry: Sendable {
        var failures = 0
        var lastFailure: Instant
        var nextSlot: Instant
        var recentCredentials: [SHA256Digest] = []
    }

    public let maximumEntries: Int
    private var entries: [String: Entry] = [:]

    public init(maximumEntries: Int = 100_000) {
        self.maximumEntries = maximumEntries
    }

    public static func delay(afterFailures failures: Int) -> Duration {
        self.delays[min(failures, self.delays.count - 1)]
    }

    /// How long an attempt from `key` starting now must wait.
    public mutating func admit(_ key: String, now: Instant) -> Duration {
        guard var entry = self.entries[key] else { return .zero }
        if now - entry.lastFailure >= Self.forgetAfter {
            self.entries[key] = nil
            return .zero
        }
        let delay = Self.delay(afterFailures: entry.failures)
        let slot = max(now + delay, entry.nextSlot)
        entry.nextSlot = slot + delay
        self.entries[key] = entry
        return slot - now
    }

    /// Records a failed login. `credential` identifies user and password (a keyed digest; never the password).
    public mutating func recordFailure(_ key: String, credential: SHA256Digest, now: Instant) {
        var entry = self.entries[key] ?? Entry(lastFailure: now, nextSlot: now)
        if !entry.recentCredentials.contains(credential) {
            entry.failures += 1
            entry.recentCredentials.append(credential)
            if entry.recentCredentials.count > Self.rememberedCredentials { entry.recentCredentials.removeFirst() }
        }
        entry.lastFailure = now
        self.entries[key] = entry
        if self.entries.count > self.maximumEntries { self.evict(now: now) }
    }

    public func failures(for key: String) -> Int { self.entries[key]?.failures ?? 0 }
    public var count: Int { self.entries.count }

    /// The addresses with failures not yet forgotten: key, failures, time since the last one (most recent first).
    public func listing(now: Instant) -> [(key: String, failures: Int, since: Duration)] {
        self.entries.filter { now - $0.value.lastFailure < Self.forgetAfter && $0.value.failures > 0 }
            .map { (key: $0.key, failures: $0.value.failures, since: now - $0.value.lastFailure) }
            .sorted { $0.since < $1.since }
    }

    /// Forgets `key`'s failures (an admin's `pop3d penalty clear`). Returns whether there were any.
    @discardableResult
    public mutating func clear(_ key: String) -> Bool { self.entries.removeValue(forKey: key) != nil }

    private mutating func evict(now: Instant) {
        self.entries = self.entries.filter { now - $0.value.lastFailure < Self.forgetAfter }
        while self.entries.count > self.maximumEntries, let oldest = self.entries.min(by: { $0.value.lastFailure < $1.value.lastFailure }) {
            self.entries[oldest.key] = nil
        }
    }
}

/// The shared, locked penalty table with the real clock, plus trusted networks that are exempt. With the
/// PostgreSQL backend the penalty lives in the database (`SharedPenalty`), so all nodes count an address's failures
/// together; this process's table then only stands in while the database does not answer.
public final class AuthPenalty: Sendable {
    private let table: NIOLockedValueBox<AuthPenaltyTable>
    private let trustedBox: NIOLockedValueBox<[CIDRNetwork]>
    /// `trusted_networks`; a SIGHUP reload may change it.
    public var trusted: [CIDRNetwork] {
        get { self.trustedBox.withLockedValue { $0 } }
        set { self.trustedBox.withLockedValue { $0 = newValue } }
    }
    /// Digests wrong credentials: per process, or the database's key shared by every node (so that a retry of the
    /// same wrong password on another node is recognised). Digests are useless without it.
    private let digestKey: SymmetricKey
    private let shared: SharedPenalty?

    public init(trustedNetworks: [CIDRNetwork], maximumEntries: Int = 100_000, shared: (store: SharedPenalty, key: [UInt8])? = nil) {
        self.trustedBox = NIOLockedValueBox(trustedNetworks)
        self.table = NIOLockedValueBox(AuthPenaltyTable(maximumEntries: maximumEntries))
        self.shared = shared?.store
        self.digestKey = shared.map { SymmetricKey(data: $0.key) } ?? SymmetricKey(size: .bits256)
    }

    public func isExempt(_ address: SocketAddress?) -> Bool {
        self.trusted.contains { $0.contains(address) }
    }

    public func admit(_ address: SocketAddress?) -> Duration {
        guard !self.isExempt(address) else { return .zero }
        let key = ConnectionLimiter.key(for: address)
        return self.table.withLockedValue { $0.admit(key, now: .now) }
    }

    /// How long an attempt from `address` must wait, and its failures so far: from the database when shared (this
    /// process's table if the database does not answer).
    public func admitShared(_ address: SocketAddress?) async -> (wait: Duration, failures: Int) {
        guard !self.isExempt(address) else { return (.zero, 0) }
        if let shared = self.shared, let answer = try? await shared.admit(ConnectionLimiter.key(for: address)) {
            return answer
        }
        return (self.admit(address), self.failures(for: address))
    }

    public func recordFailure(_ address: SocketAddress?, user: String, password: String) {
        _ = self.recordLocally(address, user: user, password: password)
    }

    /// Records a failure here and, when shared, in the database.
    public func recordFailureShared(_ address: SocketAddress?, user: String, password: String) async {
        guard let digest = self.recordLocally(address, user: user, password: password), let shared = self.shared else { return }
        // 32 bits: enough to recognise a retry of the same wrong password, too little to test guesses against
        // offline if the table (and the key beside it) leaks.
        let hex = digest.prefix(4).map { String(format: "%02x", $0) }.joined()
        try? await shared.recordFailure(ConnectionLimiter.key(for: address), credential: hex)
    }

    private func recordLocally(_ address: SocketAddress?, user: String, password: String) -> SHA256Digest? {
        guard !self.isExempt(address) else { return nil }
        let key = ConnectionLimiter.key(for: address)
        let mac = HMAC<SHA256>.authenticationCode(for: Array(user.utf8) + [0] + Array(password.utf8), using: self.digestKey)
        let digest = SHA256.hash(data: Array(mac))
        self.table.withLockedValue { $0.recordFailure(key, credential: digest, now: .now) }
        return digest
    }

    public func failures(for address: SocketAddress?) -> Int {
        self.table.withLockedValue { $0.failures(for: ConnectionLimiter.key(for: address)) }
    }

    /// Addresses under penalty: the database's (all nodes) when shared, else this process's.
    public func listing() async throws -> [ControlPenaltyInfo] {
        if let shared = self.shared {
            return try await shared.listing().map { ControlPenaltyInfo(address: $0.address, failures: $0.failures, secondsSinceLastFailure: $0.seconds) }
        }
        return self.table.withLockedValue { $0.listing(now: .now) }.map {
            ControlPenaltyInfo(address: $0.key, failures: $0.failures, secondsSinceLastFailure: $0.since.components.seconds)
        }
    }

    /// Forgets an address's failures, here and (when shared) in the database. `address` is an IP address (an IPv6
    /// one stands for its /48, as the penalty counts them) or a key as `listing()` shows it.
    public func clear(_ address: String) async throws -> Bool {
        let key = (try? SocketAddress(ipAddress: address, port: 0)).map { ConnectionLimiter.key(for: $0) } ?? address
        var cleared = self.table.withLockedValue { $0.clear(key) }
        if let shared = self.shared { cleared = try await shared.clear(key) || cleared }
        return cleared
    }
}
