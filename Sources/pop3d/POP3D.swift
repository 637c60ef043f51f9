import Accounts
import ArgumentParser
import Foundation
import Logging
import MailStore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import POP3Server
import Privileges
import ServiceLifecycle
import SystemIO

@main
struct POP3D: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pop3d",
        abstract: "A POP3S server for Maildir.",
        version: POP3Daemon.version,
        subcommands: [Dev.self, Serve.self, CheckConfig.self, DoctorCommand.self, Who.self, Kick.self, Penalty.self, DNSRecords.self, User.self, Deliver.self, Import.self, Database.self, Migrate.self, Export.self, PrivilegedHelperCommand.self, MailWorkerCommand.self]
    )
}

struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "The YAML configuration file.")
    var config: String

    func load() async throws -> ServerConfiguration {
        try await ServerConfiguration.load(file: self.config)
    }
}


/// Starts the server with a loaded configuration until SIGTERM/SIGINT.
enum ServerRunner {
    /// Logs to stderr at the configured level, then binds, drops root (on this, the main thread, before any
    /// connection is accepted) and serves until SIGTERM/SIGINT.
    static func run(
        _ configuration: ServerConfiguration,
        dropPrivileges: Bool = true,
        onListening: @escaping @Sendable ([BoundListener]) -> Void = { _ in }
    ) throws {
        let level = Logger.Level(rawValue: configuration.logLevel) ?? .info
        let format = configuration.logFormat
        // One level for every logger, which a SIGHUP reload of log.level changes.
        let control = LogLevelControl(level)
        LoggingSystem.bootstrap { label in
            switch format {
            case .text:
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = .trace
                return ControlledLevelLogHandler(handler, control: control)
            case .json:
                var handler = JSONLogHandler(label: label)
                handler.logLevel = .trace
                return ControlledLevelLogHandler(handler, control: control)
            }
        }
        var logger = Logger(label: "pop3d")
        logger.logLevel = level
        // Read (and unset) before the privileged helper is started, so that only this process speaks to systemd.
        let notifier = SystemdNotifier.fromEnvironment()
        let daemon = try POP3Daemon(configuration: configuration, dropPrivileges: dropPrivileges, logger: logger, logLevel: control)
        try runBlocking { try await daemon.run(notifier: notifier, onListening: onListening) }
    }
}

struct Dev: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a local server with a generated certificate and a demo account (zero configuration)."
    )

    @Option(help: "Data folder; created with a configuration, certificate and demo account if missing.")
    var data = "./pop3d-dev"
    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"
    @Option(name: .customLong("pop3s-port"), help: "Implicit-TLS port.")
    var pop3sPort = 9950
    @Option(name: .customLong("pop3-port"), help: "Plaintext + STLS port.")
    var pop3Port = 9110
    @Option(name: .customLong("lmtp-port"), help: "LMTP port for an MTA's deliveries (loopback clients only).")
    var lmtpPort = 9024
    @Option(name: .customLong("metrics-port"), help: "Port of GET /metrics (Prometheus), on 127.0.0.1.")
    var metricsPort = 9101

    func run() throws {
        let environment = try DevEnvironment.prepare(
            folder: self.data, host: self.host, pop3sPort: self.pop3sPort, pop3Port: self.pop3Port, lmtpPort: self.lmtpPort
        )
        for line in environment.created { print("created \(line)") }
        var configuration = try runBlocking { try await ServerConfiguration.load(file: environment.configurationFile) }
        // Flags given on the command line win over the file.
        configuration.pop3sListeners = [ListenAddress(host: self.host, port: self.pop3sPort)]
        configuration.pop3Listeners = [ListenAddress(host: self.host, port: self.pop3Port)]
        // The TCP listener comes from the flags; Unix sockets listed in the file stay.
        configuration.lmtp.listeners = configuration.lmtp.listeners.filter { if case .unix = $0 { true } else { false } }
            + [.tcp(ListenAddress(host: self.host, port: self.lmtpPort))]
        configuration.metricsListener = ListenAddress(host: "127.0.0.1", port: self.metricsPort)
        configuration.listenersFromCommandLine = true
        let ca = environment.certificateFile
        let pw = environment.passwordFile
        if geteuid() == 0 {
            FileHandle.standardError.write(Data("pop3d dev: running as root (development only; `pop3d serve` drops privileges)\n".utf8))
        }
        let host = self.host, pop3sPort = self.pop3sPort, pop3Port = self.pop3Port, lmtpPort = self.lmtpPort
        let metricsPort = self.metricsPort
        try ServerRunner.run(configuration, dropPrivileges: false) { listeners in
            let tlsPort = listeners.first { $0.kind == .pop3s }?.port ?? pop3sPort
            let plainPort = listeners.first { $0.kind == .pop3 }?.port ?? pop3Port
            let deliveryPort = listeners.first { $0.kind == .lmtp }?.port ?? lmtpPort
            let scrapePort = listeners.first { $0.kind == .metrics }?.port ?? metricsPort
            let name = host == "127.0.0.1" || host == "::1" ? "localhost" : host
            print(
                """

                pop3d dev is serving \(environment.folder)
                  POP3S (implicit TLS): \(host):\(tlsPort)    POP3 + STLS: \(host):\(plainPort)
                  LMTP (for an MTA, loopback only): \(host):\(deliveryPort)    metrics: http://127.0.0.1:\(scrapePort)/metrics
                  user: \(DevEnvironment.demoUser)    password: in \(pw)    CA file: \(ca)

                Try it:
                  curl --cacert \(ca) --user \(DevEnvironment.demoUser) pop3s://\(name):\(tlsPort)/1     (asks for the password)
                  openssl s_client -connect \(host):\(tlsPort) -CAfile \(ca) -alpn pop3 -quiet
                  python3 -c 'import poplib,ssl; c=ssl.create_default_context(cafile="\(ca)"); p=poplib.POP3_SSL("\(name)",\(tlsPort),context=c); p.user("\(DevEnvironment.demoUser)"); p.pass_(open("\(pw)").read().strip()); print(p.stat()); p.quit()'
                  python3 -c 'import smtplib; s=smtplib.LMTP("\(host)",\(deliveryPort)); s.sendmail("me@localhost",["\(DevEnvironment.demoUser)@localhost"],"Subject: hi\\n\\nhello\\n"); s.quit()'
                Thunderbird / Outlook: server \(name), port \(tlsPort), SSL/TLS, normal password, user \(DevEnvironment.demoUser);
                  accept (or import as an authority) the self-signed certificate \(ca).
                Stop with Ctrl-C.

                """
            )
            fflush(nil)
        }
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the server (production entry point).")
    @OptionGroup var options: ConfigOption

    func run() throws {
        let options = self.options
        do {
            let configuration = try runBlocking { try await options.load() }
            try ServerRunner.run(configuration)
        } catch let error as PrivilegeDrop.Failure {
            FileHandle.standardError.write(Data("pop3d: \(error)\n".utf8))
            throw ExitCode(78)
        } catch let error as ConfigurationError {
            FileHandle.standardError.write(Data("pop3d: configuration error: \(error)\n".utf8))
            throw ExitCode(78)  // EX_CONFIG
        }
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Print the effective configuration (secrets redacted); exit 78 naming the bad key on error."
    )
    @OptionGroup var options: ConfigOption

    func run() throws {
        let options = self.options
        do {
            let configuration = try runBlocking { try await options.load() }
            for warning in try POP3Daemon.check(configuration) {
                FileHandle.standardError.write(Data("pop3d: warning: \(warning)\n".utf8))
            }
            print(configuration.renderedYAML, terminator: "")
        } catch {
            FileHandle.standardError.write(Data("pop3d: configuration error: \(error)\n".utf8))
            throw ExitCode(78)  // EX_CONFIG
        }
    }
}
