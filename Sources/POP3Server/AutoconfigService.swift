import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import ServiceLifecycle

/// Client auto-configuration over HTTPS (`autoconfig.listen`, with the server's certificate): Thunderbird's
/// `/.well-known/autoconfig/mail/config-v1.1.xml` and `/mail/config-v1.1.xml?emailaddress=…`, and Outlook's
/// `POST /autodiscover/autodiscover.xml`. HTTP is swift-nio's HTTP/1.1 codec; anything else is 404, a request body
/// over 64 KiB 413, a connection idle for 30 s closed.
public final class AutoconfigService: Service, Sendable {
    let descriptor: CInt
    let tls: TLSProvider
    let documents: @Sendable () -> AutoconfigDocuments
    let logger: Logger
    let group: any EventLoopGroup
    private let onListening: @Sendable (SocketAddress) -> Void

    public init(
        descriptor: CInt,
        tls: TLSProvider,
        documents: @escaping @Sendable () -> AutoconfigDocuments,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        onListening: @escaping @Sendable (SocketAddress) -> Void = { _ in }
    ) {
        self.descriptor = descriptor
        self.tls = tls
        self.documents = documents
        self.group = group
        self.logger = logger
        self.onListening = onListening
    }

    public func run() async throws {
        let tls = self.tls
        let documents = self.documents
        try await HTTPListener.serve(
            descriptor: self.descriptor, kind: "autoconfig", group: self.group, logger: self.logger, onListening: self.onListening,
            // The current certificate: a SIGHUP reload applies to the next connection.
            before: { sync in try sync.addHandler(NIOSSLServerHandler(context: tls.httpsContext)) },
            after: { sync in try sync.addHandler(AutoconfigRequestHandler(documents: documents)) }
        )
    }
}

/// Routes one request at a time on a connection.
final class AutoconfigRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let maximumBody = 64 * 1024
    private let documents: @Sendable () -> AutoconfigDocuments
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false

    init(documents: @escaping @Sendable () -> AutoconfigDocuments) { self.documents = documents }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            self.body = []
            self.tooLarge = false
        case .body(var buffer):
            if self.body.count + buffer.readableBytes > Self.maximumBody {
                self.tooLarge = true
            } else {
                self.body += buffer.readBytes(length: buffer.readableBytes) ?? []
            }
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            let (status, text) = self.tooLarge ? (.payloadTooLarge, "request body over 64 KiB\n") : self.route(head)
            HTTPReply.send(
                context: context, head: head, status: status,
                contentType: status == .ok ? "application/xml; charset=utf-8" : "text/plain; charset=utf-8",
                body: Array(text.utf8), extraHeaders: [("Cache-Control", "no-store")]
            )
        }
    }

    func route(_ head: HTTPRequestHead) -> (HTTPResponseStatus, String) {
        let parts = head.uri.split(separator: "?", maxSplits: 1)
        let path = parts.first.map { String($0).lowercased() } ?? ""
        let query = parts.count > 1 ? String(parts[1]) : ""
        switch (head.method, path) {
        case (.GET, "/.well-known/autoconfig/mail/config-v1.1.xml"), (.GET, "/mail/config-v1.1.xml"):
            // The domain: from the address Thunderbird sends, else from the name it connected to.
            let address = Self.queryValue("emailaddress", in: query)
            let domain: String
            if let address, AutoconfigDocuments.isAddress(address) {
                domain = String(address.split(separator: "@")[1])
            } else if let host = head.headers.first(name: "host") {
                var name = host.split(separator: ":").first.map(String.init) ?? host
                if name.lowercased().hasPrefix("autoconfig.") { name = String(name.dropFirst("autoconfig.".count)) }
                domain = name
            } else {
                return (.badRequest, "no domain: give ?emailaddress= or a Host header\n")
            }
            guard domain.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }), !domain.isEmpty else {
                return (.badRequest, "not a domain name\n")
            }
            return (.ok, self.documents().thunderbird(domain: domain))
        case (.POST, "/autodiscover/autodiscover.xml"):
            guard let address = AutoconfigDocuments.requestedAddress(in: String(decoding: self.body, as: UTF8.self)) else {
                return (.badRequest, "no EMailAddress in the Autodiscover request\n")
            }
            return (.ok, self.documents().autodiscover(email: address))
        default:
            return (.notFound, "Not found.\n")
        }
    }

    /// The percent-decoded value of `name` in a query string.
    static func queryValue(_ name: String, in query: String) -> String? {
        for pair in query.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            if kv.count == 2, kv[0].lowercased() == name {
                return String(kv[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding
            }
        }
        return nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
