import Foundation

/// What mail clients are told about this server, so that a user types an address and a password and nothing else:
/// Thunderbird's autoconfig document (`config-v1.1.xml`), Microsoft's Autodiscover POX answer (Outlook), and the
/// DNS records that lead clients to them (RFC 6186 SRV, autoconfig/autodiscover names, MX). Pure: the inputs are the
/// server's configuration; `AutoconfigService` serves the documents.
public struct AutoconfigDocuments: Sendable, Equatable {
    /// The name clients connect to (must be in the certificate).
    public var hostname: String
    /// POP3S port clients use (995 unless the server listens elsewhere).
    public var port: Int
    /// The user-name form the server accepts: the whole address (accounts named `alice@example.com`) or the local
    /// part only.
    public var usernameIsAddress: Bool
    /// OAuth 2.0 offered (auth.oauth2): clients may use it instead of a password.
    public var oauth2: Bool
    /// The server's EXPIRE (`policy.expire_days`): nil never, 0 at QUIT, N days after the first retrieval.
    public var expireDays: Int?

    public init(hostname: String, port: Int = 995, usernameIsAddress: Bool, oauth2: Bool = false, expireDays: Int? = nil) {
        self.hostname = hostname
        self.port = port
        self.usernameIsAddress = usernameIsAddress
        self.oauth2 = oauth2
        self.expireDays = expireDays
    }

    /// The settings for a server configuration: the host name given, else the certificate's first DNS name.
    public static func from(_ configuration: ServerConfiguration, hostname: String, userNames: [String]) -> AutoconfigDocuments {
        AutoconfigDocuments(
            hostname: hostname,
            port: configuration.pop3sListeners.first?.port ?? 995,
            usernameIsAddress: userNames.contains { $0.contains("@") },
            oauth2: configuration.oauth2 != nil,
            expireDays: configuration.policy.expireDays
        )
    }

    /// Thunderbird's clientConfig 1.1 for `domain` (https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat).
    /// POP3 over implicit TLS; leaving messages on the server as the server's EXPIRE allows.
    public func thunderbird(domain: String) -> String {
        let domain = Self.xml(domain.lowercased())
        let host = Self.xml(self.hostname)
        let username = self.usernameIsAddress ? "%EMAILADDRESS%" : "%EMAILLOCALPART%"
        var servers = ""
        for authentication in (self.oauth2 ? ["password-cleartext", "OAuth2"] : ["password-cleartext"]) {
            servers += """
                    <incomingServer type="pop3">
                      <hostname>\(host)</hostname>
                      <port>\(self.port)</port>
                      <socketType>SSL</socketType>
                      <username>\(username)</username>
                      <authentication>\(authentication)</authentication>
                      <pop3>
                        <leaveMessagesOnServer>\(self.leaveOnServer)</leaveMessagesOnServer>\(self.daysElement)
                      </pop3>
                    </incomingServer>

                """
        }
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <clientConfig version="1.1">
              <emailProvider id="\(domain)">
                <domain>\(domain)</domain>
                <displayName>\(domain) mail</displayName>
                <displayShortName>\(domain)</displayShortName>
            \(servers)  </emailProvider>
            </clientConfig>

            """
    }

    /// EXPIRE 0 removes what was retrieved at QUIT: leaving it would only mislead the client.
    var leaveOnServer: String { self.expireDays == 0 ? "false" : "true" }

    var daysElement: String {
        guard let days = self.expireDays, days > 0 else { return "" }
        return "\n                <daysToLeaveMessagesOnServer>\(days)</daysToLeaveMessagesOnServer>"
    }

    /// Microsoft's Autodiscover POX answer for `email` (Outlook's "POX" protocol, response schema 2006a).
    public func autodiscover(email: String) -> String {
        let login = self.usernameIsAddress ? email : String(email.split(separator: "@").first ?? "")
        return """
            <?xml version="1.0" encoding="utf-8"?>
            <Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006">
              <Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a">
                <Account>
                  <AccountType>email</AccountType>
                  <Action>settings</Action>
                  <Protocol>
                    <Type>POP3</Type>
                    <Server>\(Self.xml(self.hostname))</Server>
                    <Port>\(self.port)</Port>
                    <LoginName>\(Self.xml(login))</LoginName>
                    <DomainRequired>off</DomainRequired>
                    <SPA>off</SPA>
                    <SSL>on</SSL>
                    <AuthRequired>on</AuthRequired>
                  </Protocol>
                </Account>
              </Response>
            </Autodiscover>

            """
    }

    /// The e-mail address in an Autodiscover request (`<EMailAddress>…</EMailAddress>`), if it looks like one.
    public static func requestedAddress(in body: String) -> String? {
        guard let start = body.range(of: "<EMailAddress>"), let end = body.range(of: "</EMailAddress>", range: start.upperBound..<body.endIndex)
        else { return nil }
        let address = body[start.upperBound..<end.lowerBound].trimmingCharacters(in: .whitespacesAndNewlines)
        return Self.isAddress(address) ? address : nil
    }

    /// A plausible address: one @, no spaces, no markup, at most 254 octets.
    public static func isAddress(_ text: String) -> Bool {
        let parts = text.split(separator: "@", omittingEmptySubsequences: false)
        return text.utf8.count <= 254 && parts.count == 2 && !parts[0].isEmpty && parts[1].contains(".")
            && !text.contains(where: { $0.isWhitespace || "<>&\"'".contains($0) })
    }

    /// The DNS records to publish for `domain`: the RFC 6186 SRV of POP3S (and a "not offered" one for cleartext
    /// POP3), the autoconfig and autodiscover names, and the MX.
    public func dnsRecords(domain: String, plaintextPort: Int?) -> String {
        let domain = domain.lowercased().hasSuffix(".") ? domain.lowercased() : domain.lowercased() + "."
        let host = self.hostname.hasSuffix(".") ? self.hostname : self.hostname + "."
        var lines = [
            "; RFC 6186: clients look for POP3 over TLS here",
            "_pop3s._tcp.\(domain)\t3600\tIN\tSRV\t0 1 \(self.port) \(host)",
        ]
        if let plaintextPort {
            lines.append("_pop3._tcp.\(domain)\t3600\tIN\tSRV\t10 1 \(plaintextPort) \(host)")
        } else {
            lines.append("; POP3 without TLS is not offered (target \".\", RFC 2782)")
            lines.append("_pop3._tcp.\(domain)\t3600\tIN\tSRV\t0 0 0 .")
        }
        lines += [
            "; Thunderbird's autoconfig and Outlook's Autodiscover (served by pop3d with autoconfig.listen)",
            "autoconfig.\(domain)\t3600\tIN\tCNAME\t\(host)",
            "autodiscover.\(domain)\t3600\tIN\tCNAME\t\(host)",
            "; mail for the domain",
            "\(domain)\t3600\tIN\tMX\t10 \(host)",
        ]
        return lines.joined(separator: "\n") + "\n"
    }

    static func xml(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
