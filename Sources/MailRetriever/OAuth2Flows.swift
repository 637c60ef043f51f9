import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import POP3Core
import SASL
import SystemIO

/// The OAuth 2.0 client flows of `pop3`: device authorization (RFC 8628), authorization code with PKCE on a loopback
/// redirect (RFC 7636, RFC 8252), and refresh (RFC 6749 §6). Token endpoint replies are bounded (64 KiB) and parsed
/// strictly; server text in errors is sanitised; tokens never reach a log.
public struct OAuth2Flows: Sendable {
    public let provider: OAuth2Provider
    /// Where instructions for the user go (the URL to open, the code to type).
    let say: @Sendable (String) -> Void
    let timeout: TimeAmount

    public init(provider: OAuth2Provider, timeout: TimeAmount = .seconds(30), say: @escaping @Sendable (String) -> Void) {
        self.provider = provider
        self.say = say
        self.timeout = timeout
    }

    /// The fields of a token endpoint (or device endpoint) reply that pop3 reads.
    struct Reply {
        var status: UInt
        var fields: [String: Any]

        func string(_ key: String) -> String? { self.fields[key] as? String }
        func int(_ key: String) -> Int? { (self.fields[key] as? NSNumber)?.intValue ?? (self.fields[key] as? String).flatMap { Int($0) } }

        /// `error (description)`, sanitised and bounded.
        var errorText: String {
            let code = self.string("error") ?? "HTTP \(self.status)"
            let description = self.string("error_description").map { " (\(sanitize(Array($0.utf8.prefix(200)))))" } ?? ""
            return sanitize(Array(code.utf8.prefix(64))) + description
        }
    }

    static let maximumReplyBytes = 64 * 1024
    /// No redirects: a 307 would re-send the form (refresh token, client secret, code verifier) to wherever it points.
    static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    /// POSTs a form and reads the JSON reply (any status: OAuth errors come as 400 with JSON).
    func post(_ url: String, _ form: [(String, String)]) async throws -> Reply {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        request.headers.add(name: "Accept", value: "application/json")
        request.body = .bytes(ByteBuffer(string: OAuth2URL.formEncode(form)))
        let response: HTTPClientResponse
        let body: ByteBuffer
        do {
            let seconds = self.timeout.nanoseconds / 1_000_000_000
            let prepared = request
            (response, body) = try await withDeadline(.seconds(seconds)) {
                let response = try await Self.client.execute(prepared, timeout: .seconds(seconds))
                return (response, try await response.body.collect(upTo: Self.maximumReplyBytes))
            }
        } catch {
            throw OAuth2Error.http("\(url): \(error)")
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] else {
            throw OAuth2Error.server("\(url) answered HTTP \(response.status.code) without a JSON object")
        }
        return Reply(status: response.status.code, fields: object)
    }

    private var clientFields: [(String, String)] {
        [("client_id", self.provider.clientID)] + (self.provider.clientSecret.map { [("client_secret", $0)] } ?? [])
    }

    /// Tokens from a successful token endpoint reply.
    func tokens(_ reply: Reply, previousRefreshToken: String?, now: Int64) throws -> OAuth2Tokens {
        guard reply.status == 200, let access = reply.string("access_token"), !access.isEmpty else {
            throw OAuth2Error.server(reply.errorText)
        }
        if let type = reply.string("token_type"), type.lowercased() != "bearer" {
            throw OAuth2Error.server("token type \(sanitize(Array(type.utf8.prefix(20)))) is not Bearer")
        }
        // Bounded: a server's number must not overflow the clock arithmetic.
        let lifetime = Int64(min(max(reply.int("expires_in") ?? 3600, 0), 86_400 * 365))
        return OAuth2Tokens(
            refreshToken: reply.string("refresh_token") ?? previousRefreshToken,
            accessToken: access,
            expiresAt: now + lifetime
        )
    }

    // MARK: Refresh

    /// A new access token for a refresh token (the server may rotate the refresh token too).
    public func refresh(_ refreshToken: String, account: String, now: Int64) async throws -> OAuth2Tokens {
        let reply = try await self.post(
            self.provider.tokenEndpoint,
            [("grant_type", "refresh_token"), ("refresh_token", refreshToken), ("scope", self.provider.scope)] + self.clientFields
        )
        if reply.status != 200, reply.string("error") == "invalid_grant" {
            throw OAuth2Error.refreshRefused(account: account, reason: reply.errorText)
        }
        return try self.tokens(reply, previousRefreshToken: refreshToken, now: now)
    }

    // MARK: Device flow (RFC 8628)

    /// Asks for a device code, tells the user where to enter it, and polls until the user has decided.
    /// `authorization_pending` waits `interval`; `slow_down` adds 5 s to it (RFC 8628 §3.5).
    public func deviceFlow(now: @Sendable () -> Int64, sleep: @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) }) async throws -> OAuth2Tokens {
        guard let endpoint = self.provider.deviceEndpoint else { throw OAuth2Error.server("no device authorization endpoint configured") }
        let start = try await self.post(endpoint, [("scope", self.provider.scope)] + self.clientFields)
        guard start.status == 200, let deviceCode = start.string("device_code"), let userCode = start.string("user_code"),
            let uri = start.string("verification_uri") ?? start.string("verification_url")
        else { throw OAuth2Error.server(start.errorText) }
        var interval = min(max(1, start.int("interval") ?? 5), 60)
        let deadline = now() + Int64(min(start.int("expires_in") ?? 900, 3600))
        if let complete = start.string("verification_uri_complete") {
            self.say("Open \(sanitize(Array(complete.utf8))) (or \(sanitize(Array(uri.utf8))) and enter the code \(sanitize(Array(userCode.utf8))))")
        } else {
            self.say("Open \(sanitize(Array(uri.utf8))) and enter the code \(sanitize(Array(userCode.utf8)))")
        }
        while now() < deadline {
            try await sleep(.seconds(interval))
            let reply = try await self.post(
                self.provider.tokenEndpoint,
                [("grant_type", "urn:ietf:params:oauth:grant-type:device_code"), ("device_code", deviceCode)] + self.clientFields
            )
            if reply.status == 200 { return try self.tokens(reply, previousRefreshToken: nil, now: now()) }
            switch reply.string("error") {
            case "authorization_pending": continue
            case "slow_down": interval = min(interval + 5, 60)
            case "access_denied": throw OAuth2Error.denied(reply.errorText)
            case "expired_token": throw OAuth2Error.expired
            default: throw OAuth2Error.server(reply.errorText)
            }
        }
        throw OAuth2Error.expired
    }

    // MARK: Authorization code with PKCE on a loopback redirect

    /// Listens on 127.0.0.1 (a free port), tells the user to open the authorization URL, waits for the browser's
    /// redirect (checking `state`), and exchanges the code with the PKCE verifier.
    public func authorizationCodeFlow(now: @Sendable () -> Int64, waitSeconds: Int64 = 300) async throws -> OAuth2Tokens {
        guard let endpoint = self.provider.authorizationEndpoint else { throw OAuth2Error.server("no authorization endpoint configured") }
        let verifier = Self.randomURLSafe(32)
        let challenge = Self.base64URL(Array(SHA256.hash(data: Array(verifier.utf8))))
        let state = Self.randomURLSafe(16)
        let redirect = try await LoopbackRedirect.start(state: state)
        defer { redirect.close() }
        let redirectURI = "http://127.0.0.1:\(redirect.port)/"
        guard var components = URLComponents(string: endpoint) else { throw OAuth2Error.server("bad authorization endpoint") }
        let existing = components.queryItems ?? []
        components.queryItems = existing + [
            URLQueryItem(name: "response_type", value: "code"),
            URLQueryItem(name: "client_id", value: self.provider.clientID),
            URLQueryItem(name: "redirect_uri", value: redirectURI),
            URLQueryItem(name: "scope", value: self.provider.scope),
            URLQueryItem(name: "state", value: state),
            URLQueryItem(name: "code_challenge", value: challenge),
            URLQueryItem(name: "code_challenge_method", value: "S256"),
            URLQueryItem(name: "access_type", value: "offline"),
            URLQueryItem(name: "prompt", value: "consent"),
        ]
        guard let url = components.url?.absoluteString else { throw OAuth2Error.server("bad authorization endpoint") }
        self.say("Open this URL in a browser on this machine and allow access:\n\(url)")
        let query = try await redirect.wait(seconds: waitSeconds)
        guard query["state"] == state else { throw OAuth2Error.denied("the redirect's state does not match (not our request)") }
        if let error = query["error"] { throw OAuth2Error.denied(sanitize(Array(error.utf8.prefix(64)))) }
        guard let code = query["code"], !code.isEmpty else { throw OAuth2Error.denied("no code in the redirect") }
        let reply = try await self.post(
            self.provider.tokenEndpoint,
            [("grant_type", "authorization_code"), ("code", code), ("redirect_uri", redirectURI), ("code_verifier", verifier)]
                + self.clientFields
        )
        return try self.tokens(reply, previousRefreshToken: nil, now: now())
    }

    static func randomURLSafe(_ bytes: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        return Self.base64URL((0..<bytes).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
    }

    static func base64URL(_ bytes: [UInt8]) -> String {
        Base64.encode(bytes).replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}

/// A one-shot HTTP listener on 127.0.0.1 for the authorization redirect: the first `GET /?…` is answered with a short
/// page and its query returned.
final class LoopbackRedirect: Sendable {
    let port: Int
    private let channel: any Channel
    private let result: EventLoopPromise<[String: String]>

    private init(port: Int, channel: any Channel, result: EventLoopPromise<[String: String]>) {
        self.port = port
        self.channel = channel
        self.result = result
    }

    /// Only a request carrying `state` ends the wait: anything else on 127.0.0.1 (another process, a web page) is
    /// answered and ignored.
    static func start(state: String) async throws -> LoopbackRedirect {
        let group = MultiThreadedEventLoopGroup.singleton
        let result = group.next().makePromise(of: [String: String].self)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(RedirectHandler(result: result, state: state))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return LoopbackRedirect(port: channel.localAddress?.port ?? 0, channel: channel, result: result)
    }

    func wait(seconds: Int64) async throws -> [String: String] {
        let timer = self.channel.eventLoop.scheduleTask(in: .seconds(seconds)) {
            self.result.fail(OAuth2Error.denied("no redirect from the browser within \(seconds) s"))
        }
        defer { timer.cancel() }
        return try await self.result.futureResult.get()
    }

    func close() {
        self.result.fail(OAuth2Error.denied("cancelled"))
        self.channel.close(promise: nil)
    }

    private final class RedirectHandler: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let result: EventLoopPromise<[String: String]>
        let state: String

        init(result: EventLoopPromise<[String: String]>, state: String) {
            self.result = result
            self.state = state
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .head(let head) = self.unwrapInboundIn(data) else { return }
            var query: [String: String] = [:]
            for item in URLComponents(string: head.uri)?.queryItems ?? [] {
                if let value = item.value { query[item.name] = value }
            }
            let ours = query["state"] == self.state
            let page = ours && query["code"] != nil ? "Authorized. You can close this window and return to pop3." : "Authorization did not complete."
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
            headers.add(name: "Connection", value: "close")
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: page)))), promise: nil)
            context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
            // Only our state counts (a browser may ask for /favicon.ico first; others may knock).
            if ours { self.result.succeed(query) }
        }
    }
}
