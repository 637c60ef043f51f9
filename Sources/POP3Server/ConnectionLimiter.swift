import NIOConcurrencyHelpers
import NIOCore

/// Counts open connections in total and per client address (IPv6 per /48), and refuses past the limits.
public final class ConnectionLimiter: Sendable {
    private struct State {
        var total = 0
        var perAddress: [String: Int] = [:]
        var maximumConnections: Int
        var maximumPerAddress: Int
    }

    private let state: NIOLockedValueBox<State>

    public init(maximumConnections: Int, maximumPerAddress: Int) {
        self.state = NIOLockedValueBox(State(maximumConnections: maximumConnections, maximumPerAddress: maximumPerAddress))
    }

    public var maximumConnections: Int { self.state.withLockedValue { $0.maximumConnections } }
    public var maximumPerAddress: Int { self.state.withLockedValue { $0.maximumPerAddress } }

    /// New limits (SIGHUP): connections already open stay; new ones are counted against these.
    public func update(maximumConnections: Int, maximumPerAddress: Int) {
        self.state.withLockedValue {
            $0.maximumConnections = maximumConnections
            $0.maximumPerAddress = maximumPerAddress
        }
    }

    public enum Decision: Equatable, Sendable { case admitted(key: String), tooManyConnections, tooManyFromAddress }

    /// The key an address counts under: the IPv4 address, or the IPv6 /48 prefix.
    public static func key(for address: SocketAddress?) -> String {
        switch address {
        case .v4?:
            // `ipAddress`, not `host`: an address built from text (a PROXY header) has an empty host.
            return address?.ipAddress ?? "?"

        case .v6(let v6)?:
            // Keep the first 48 bits.
            return withUnsafeBytes(of: v6.address.sin6_addr) { raw in
                let b = Array(raw.prefix(6))
                return String(format6: b)
            }
        default:
            return "local"
        }
    }

    /// - Parameter perAddress: false for a trusted proxy, whose connections carry many clients.
    public func admit(_ address: SocketAddress?, perAddress: Bool = true) -> Decision {
        let key = perAddress ? Self.key(for: address) : "proxy"
        return self.state.withLockedValue { state in
            guard state.total < state.maximumConnections else { return .tooManyConnections }
            let current = state.perAddress[key, default: 0]
            guard !perAddress || current < state.maximumPerAddress else { return .tooManyFromAddress }
            state.total += 1
            state.perAddress[key] = current + 1
            return .admitted(key: key)
        }
    }

    public func release(key: String) {
        self.state.withLockedValue { state in
            state.total -= 1
            let left = state.perAddress[key, default: 1] - 1
            state.perAddress[key] = left == 0 ? nil : left
        }
    }

    public var openConnections: Int { self.state.withLockedValue { $0.total } }
}

extension String {
    fileprivate init(format6 bytes: [UInt8]) {
        var parts: [String] = []
        var i = 0
        while i + 1 < bytes.count {
            parts.append(String(UInt16(bytes[i]) << 8 | UInt16(bytes[i + 1]), radix: 16))
            i += 2
        }
        self = parts.joined(separator: ":") + "::/48"
    }
}
