import ArgumentParser
import Foundation
import POP3Server
import SystemIO

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check the set-up step by step (listeners, certificate, reachability, firewall, DNS, privileges, storage): PASS, WARN or FAIL with the command that fixes it.",
        discussion: "Reads and probes only (a scratch message is delivered and removed under state_dir). Exit 1 when any step FAILs. Run it as root to read the firewall."
    )
    @OptionGroup var options: ConfigOption
    @Option(help: "The name clients connect to: the certificate must cover it, DNS should point here.")
    var host: String?
    @Option(help: "The mail domain: its _pop3s._tcp SRV (RFC 6186) and MX records should name --host.")
    var domain: String?
    @Option(name: .customLong("dns-server"), help: "Ask this DNS server (HOST:PORT) for the SRV and MX records instead of /etc/resolv.conf's.")
    var dnsServer: String?
    @Flag(help: "One JSON array of {step, status, message, fix} instead of lines.")
    var json = false

    func run() throws {
        let options = self.options
        let configuration: ServerConfiguration
        do {
            configuration = try runBlocking { try await options.load() }
        } catch {
            if self.json {
                print(#"[{"step":"configuration","status":"FAIL","message":\#(Self.quoted("\(error)"))}]"#)
            } else {
                print("FAIL  configuration: \(error)")
            }
            throw ExitCode(1)
        }
        let doctor = Doctor(configuration: configuration, configurationFile: options.config, host: self.host, domain: self.domain, dnsServer: self.dnsServer)
        let findings = try runBlocking { await doctor.run() }
        if self.json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(findings), as: UTF8.self))
        } else {
            print("PASS  configuration: \(options.config) loads")
            for finding in findings {
                print("\(finding.status.rawValue)  \(finding.step): \(finding.message)")
                if let fix = finding.fix, finding.status != .pass { print("      fix: \(fix)") }
            }
            let failed = findings.filter { $0.status == .fail }.count
            let warned = findings.filter { $0.status == .warn }.count
            print("summary: \(findings.count - failed - warned + 1) PASS, \(warned) WARN, \(failed) FAIL")
        }
        if findings.contains(where: { $0.status == .fail }) { throw ExitCode(1) }
    }

    static func quoted(_ text: String) -> String {
        String(decoding: (try? JSONEncoder().encode(text)) ?? Data("\"\"".utf8), as: UTF8.self)
    }
}
