import Accounts
import AsyncHTTPClient
import Foundation
import NIOCore
import SASL
import SystemIO

/// The HTTP behind `auth.oauth2` (a JWKS URL, RFC 7662 introspection): an async-http-client that follows no
/// redirect (a 30x could lead to http, or take the token elsewhere), 10 s for the whole request and reply, replies
/// bounded at 1 MiB.
struct OAuth2HTTPClient: OAuth2HTTP {
    static let maximumReplyBytes = 1 << 20
    static let deadline: Duration = .seconds(10)
    static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(10))
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    func get(_ url: String) async throws -> (status: Int, body: [UInt8]) {
        var request = HTTPClientRequest(url: url)
        request.headers.add(name: "Accept", value: "application/json")
        return try await self.execute(request)
    }

    func post(_ url: String, form: [(String, String)], user: String, password: String) async throws -> (status: Int, body: [UInt8]) {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        request.headers.add(name: "Accept", value: "application/json")
        // RFC 6749 §2.3.1: client id and secret form-encoded, then Basic.
        let credentials = "\(OAuth2URL.formEscape(user)):\(OAuth2URL.formEscape(password))"
        request.headers.add(name: "Authorization", value: "Basic \(Data(credentials.utf8).base64EncodedString())")
        request.body = .bytes(ByteBuffer(string: OAuth2URL.formEncode(form)))
        return try await self.execute(request)
    }

    private func execute(_ request: HTTPClientRequest) async throws -> (status: Int, body: [UInt8]) {
        try await withDeadline(Self.deadline) {
            let response = try await Self.client.execute(request, deadline: .now() + .seconds(10))
            let body = try await response.body.collect(upTo: Self.maximumReplyBytes)
            return (Int(response.status.code), Array(body.readableBytesView))
        }
    }
}
