import ArgumentParser
import Foundation
import POP3Server
import SystemIO

struct DNSRecords: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dns-records",
        abstract: "Print the DNS records to publish so that mail clients find this server: RFC 6186 SRV, autoconfig and autodiscover names, MX.",
        discussion: "With --config, the POP3S port, whether POP3 with STLS is offered and the user-name form come from the configuration."
    )
    @Option(help: "The name clients connect to (in the certificate), e.g. mail.example.com.")
    var host: String
    @Option(help: "The mail domain, e.g. example.com.")
    var domain: String
    @Option(help: "The configuration file (optional).")
    var config: String?

    func validate() throws {
        for (name, value) in [("--host", self.host), ("--domain", self.domain)] {
            guard !value.isEmpty, value.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }) else {
                throw ValidationError("\(name): expected a DNS name, got \"\(value)\"")
            }
        }
    }

    func run() throws {
        var documents = AutoconfigDocuments(hostname: self.host, usernameIsAddress: false)
        var plaintext: Int?
        if let path = self.config {
            do {
                let configuration = try runBlocking { try await ServerConfiguration.load(file: path) }
                documents = AutoconfigDocuments.from(configuration, hostname: self.host, userNames: [])
                plaintext = configuration.pop3Listeners.first?.port
            } catch {
                FileHandle.standardError.write(Data("pop3d: configuration error: \(error)\n".utf8))
                throw ExitCode(78)
            }
        }
        print(documents.dnsRecords(domain: self.domain, plaintextPort: plaintext), terminator: "")
    }
}
