import ArgumentParser
import Foundation
import Logging
import MailRetriever
import NIOPosix
import POP3Client
import POP3Core
import POP3NIO
import SystemIO

@main
struct POP3Command: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pop3",
        abstract: "Download mail over POP3S into a Maildir, an mbox or a delivery command, without ever losing a message.",
        subcommands: [Fetch.self, Probe.self, Setup.self, OAuth2Command.self]
    )
}

struct TLSOptions: ParsableArguments {
    @Option(name: .customLong("ca-file"), help: "Trust the certificates in this PEM file (instead of the system store).")
    var caFile: String?
    @Option(help: "Trust only a certificate or public key with this SHA-256 pin: sha256:HEX.")
    var pin: String?
    @Flag(help: "Use STLS on a pop3:// URL (required once chosen; never falls back to plaintext).")
    var starttls = false
    @Flag(name: .customLong("insecure-plaintext"), help: "Allow a pop3:// connection without TLS (passwords in the clear).")
    var insecurePlaintext = false

    func trust() throws -> TrustPolicy {
        if self.caFile != nil && self.pin != nil { throw ValidationError("--ca-file and --pin exclude each other") }
        if let pin = self.pin {
            guard let policy = TrustPolicy.pin(parsing: pin) else { throw ValidationError("--pin wants sha256: and 64 hex digits") }
            return policy
        }
        return self.caFile.map { .caFile($0) } ?? .system
    }

    func security(for url: POP3URL) throws -> ConnectionSecurity {
        do {
            return try url.security(starttls: self.starttls, insecurePlaintext: self.insecurePlaintext)
        } catch {
            throw ValidationError(error.description)
        }
    }
}

struct Fetch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Download new messages from one server (URL form) or from accounts in the accounts file.",
        discussion: """
            pop3 fetch [options] --password-file FILE (--maildir DIR | --mbox FILE | --mda COMMAND) pop3s://USER@HOST[:PORT]
            pop3 fetch [--config FILE] [ACCOUNT...]

            Messages are deleted on the server after a durable local copy exists, unless --keep or --keep-days.
            Exit status: 0 when every selected account was fetched, 1 when one or more failed (one line each on stderr).
            """
    )

    @Argument(help: "pop3s://USER@HOST[:PORT] (then the options below), or account names from the accounts file.")
    var targets: [String] = []
    @Option(help: "Accounts file (default ~/.config/pop3/accounts.yaml).")
    var config: String?
    @Flag(help: "Leave messages on the server.")
    var keep = false
    @Option(name: .customLong("keep-days"), help: "Leave messages on the server for N days after first seeing them, then delete.")
    var keepDays: Int?
    @Option(name: .customLong("max-size"), help: "Skip messages larger than this many octets (a warning, not an error).")
    var maxSize: Int?
    @OptionGroup var tls: TLSOptions
    @Option(help: "Login method: auto (the strongest the server offers: scram-sha-256-plus, scram-sha-256, plain, user), scram-sha-256-plus, scram-sha-256, plain, user, oauthbearer, xoauth2 (OAuth 2.0: with --oauth2-token-command, or an account with provider:). An explicit method is never replaced by a weaker one.")
    var auth: String?
    @Option(name: .customLong("oauth2-token-command"), help: "With --auth oauthbearer or xoauth2: a command (via sh -c) whose first output line is the OAuth 2.0 access token, e.g. oama access ACCOUNT.")
    var oauth2TokenCommand: String?
    @Option(name: .customLong("password-file"), help: "File whose first line is the password (mode 0600).")
    var passwordFile: String?
    @Option(help: "Deliver into this Maildir.")
    var maildir: String?
    @Option(help: "Deliver into this mbox file (mboxrd).")
    var mbox: String?
    @Option(help: "Deliver by running this command (via sh -c) with the message on stdin; exit 0 = delivered.")
    var mda: String?
    @Option(help: "Hand messages to the MTA over LMTP: unix:PATH or HOST:PORT (loopback); a message is deleted only after the MTA's 250 for it.")
    var lmtp: String?
    @Option(help: "Hand messages to the MTA over SMTP: HOST:PORT (loopback); a message is deleted only after the MTA's 250 for it.")
    var smtp: String?
    @Option(help: "The envelope recipient for --lmtp/--smtp (default: your user name).")
    var recipient: String?
    @Option(help: "Fetch at most N messages per session, then QUIT (making deletions final) and start a new one: for links that drop.")
    var checkpoint: Int?
    @Option(help: "Seconds to wait for a connection, the TLS handshake or any reply before giving up.")
    var timeout = 60
    @Flag(help: "Print a JSON summary on stdout.")
    var json = false
    @Flag(help: "Log the protocol exchange (passwords redacted) to stderr.")
    var verbose = false
    @Option(help: "Keep running: poll each account every SECONDS (10 to 86400; an account's interval: wins; 0: the accounts file's daemon: {interval:}, else 300). SIGUSR1 polls at once; SIGTERM stores the message in flight and exits 0. A failing account is retried later and later (doubling, at most hourly) without delaying the others.")
    var daemon: Int?

    func validate() throws {
        if let days = self.keepDays, days < 0 { throw ValidationError("--keep-days must be 0 or more") }
        if let size = self.maxSize, size < 0 { throw ValidationError("--max-size must be 0 or more") }
        if self.timeout < 1 { throw ValidationError("--timeout must be at least 1 second") }
        if let checkpoint = self.checkpoint, checkpoint < 1 { throw ValidationError("--checkpoint must be at least 1") }
        if let seconds = self.daemon, seconds != 0 && !AccountsFile.intervalRange.contains(seconds) {
            throw ValidationError("--daemon SECONDS: 0 (the accounts file's interval) or 10 to 86400")
        }
        if self.daemon != nil && self.json { throw ValidationError("--daemon and --json exclude each other (the daemon logs a line per poll)") }
    }

    func run() async throws {
        var configuredLogger = Logger(label: "pop3")
        configuredLogger.logLevel = self.verbose ? .trace : .warning
        let logger = configuredLogger
        let jobs = try self.jobs()
        let stateDirectory = try StatePaths.directory()
        let fromAccountsFile = !(self.targets.first?.contains("://") ?? false)
        if fromAccountsFile && !self.keep && self.keepDays == nil {
            for job in jobs where job.retention == .deleteAfterDownload {
                if let notice = DeletionNotice.once(account: job.name, key: job.url.accountKey, stateDirectory: stateDirectory) {
                    FileHandle.standardError.write(Data((notice + "\n").utf8))
                }
            }
        }
        if let seconds = self.daemon {
            try await self.runDaemon(jobs, seconds: seconds, stateDirectory: stateDirectory, logger: logger)
            return
        }
        let progress = self.json ? nil : Progress.forTerminal()
        let summaries = await withTaskGroup(of: FetchSummary.self) { group in
            for job in jobs {
                // The account's task and its connection share one event loop: no thread hop per read.
                let loop = MultiThreadedEventLoopGroup.singleton.next()
                let fetcher = Fetcher(
                    job: job,
                    stateDirectory: stateDirectory,
                    eventLoop: loop,
                    logger: logger,
                    progress: jobs.count == 1 ? progress : nil
                )
                group.addTask(executorPreference: EventLoopTaskExecutor(loop)) { await fetcher.run() }
            }
            var all: [FetchSummary] = []
            for await summary in group { all.append(summary) }
            return all.sorted { $0.account < $1.account }
        }
        for summary in summaries where summary.error != nil {
            FileHandle.standardError.write(Data("pop3: \(summary.account): \(summary.error!)\n".utf8))
        }
        if self.json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(["accounts": summaries]), as: UTF8.self))
        } else if !summaries.contains(where: { $0.error != nil }) && isatty(STDERR_FILENO) == 1 {
            for s in summaries {
                FileHandle.standardError.write(Data("pop3: \(s.account): \(s.fetched) fetched, \(s.deleted) deleted, \(s.skipped) skipped\n".utf8))
            }
        }
        if summaries.contains(where: { $0.error != nil }) { throw ExitCode(1) }
    }

    /// `--daemon`: polls until SIGTERM/SIGINT, then exits 0 once the fetches in progress have stored their message.
    func runDaemon(_ jobs: [FetchJob], seconds: Int, stateDirectory: String, logger: Logger) async throws {
        var fallback = seconds
        if seconds == 0 {
            let path = self.config ?? AccountsFile.defaultPath()
            let text = (try? FileSystem.readFile(path, limit: 1 << 20)).flatMap { $0 }.map { String(decoding: $0, as: UTF8.self) }
            fallback = try text.flatMap { try AccountsFile.daemonInterval(yaml: $0, path: path) } ?? 300
        }
        let intervals = jobs.map { Duration.seconds($0.interval ?? fallback) }
        let daemon = FetchDaemon(
            jobs: jobs,
            intervals: intervals,
            makeFetcher: { job, stopRequested in
                Fetcher(
                    job: job,
                    stateDirectory: stateDirectory,
                    eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
                    logger: logger,
                    stopRequested: stopRequested
                )
            },
            report: { line in FileHandle.standardError.write(Data((line + "\n").utf8)) }
        )
        var sources: [any DispatchSourceSignal] = []
        for number in [SIGUSR1, SIGTERM, SIGINT] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { @Sendable in
                if number == SIGUSR1 { daemon.pollNow() } else { daemon.stop() }
            }
            source.resume()
            sources.append(source)
        }
        FileHandle.standardError.write(Data(
            "pop3: polling \(jobs.count) account\(jobs.count == 1 ? "" : "s") (\(zip(jobs, intervals).map { "\($0.name) every \($1.components.seconds) s" }.joined(separator: ", "))); SIGUSR1 polls now, SIGTERM stops\n".utf8
        ))
        await daemon.run()
        for source in sources { source.cancel() }
        FileHandle.standardError.write(Data("pop3: stopped\n".utf8))
    }

    func jobs() throws -> [FetchJob] {
        let retention = RetentionPolicy(keep: self.keep, keepDays: self.keepDays)
        var authentication: AuthenticationMethod?
        if let text = self.auth {
            guard let method = AuthenticationMethod(parsing: text) else {
                throw ValidationError("--auth \(text): one of \(AuthenticationMethod.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            authentication = method
        }
        let localAddress = ProcessInfo.processInfo.environment["POP3_BIND_ADDRESS"]
        if let first = self.targets.first, first.contains("://") {
            guard self.targets.count == 1 else { throw ValidationError("one URL at a time") }
            let url = try POP3URL.parse(first)
            let secret: PasswordSource
            switch (self.passwordFile, self.oauth2TokenCommand) {
            case (let file?, nil): secret = .file(file)
            case (nil, let command?): secret = .command(command)
            case (.some, .some): throw ValidationError("give --password-file or --oauth2-token-command, not both")
            case (nil, nil): throw ValidationError("--password-file FILE (or, with OAuth, --oauth2-token-command) is required with a URL")
            }
            let method = try authentication ?? url.authentication()
            if method.usesBearerToken != (self.oauth2TokenCommand != nil) {
                throw ValidationError("--oauth2-token-command goes with --auth oauthbearer or xoauth2, and they need it")
            }
            var destinations = [self.maildir.map { LocalDestination.maildir($0) }, self.mbox.map { .mbox($0) }, self.mda.map { .mda($0) }].compactMap { $0 }
            for (kind, text) in [(MTATarget.Kind.lmtp, self.lmtp), (.smtp, self.smtp)] {
                guard let text else { continue }
                switch MTATarget.parse(kind: kind, text, recipient: self.recipient ?? LocalDestination.defaultRecipient()) {
                case .success(let target): destinations.append(.mta(target))
                case .failure(let problem): throw ValidationError("--\(kind.rawValue): \(problem.description)")
                }
            }
            guard destinations.count == 1 else { throw ValidationError("give exactly one of --maildir, --mbox, --mda, --lmtp, --smtp") }
            return [
                FetchJob(
                    name: "\(url.user)@\(url.host)",
                    url: url,
                    password: secret,
                    trust: try self.tls.trust(),
                    security: try self.tls.security(for: url),
                    destination: destinations[0],
                    retention: retention,
                    maximumSize: self.maxSize,
                    checkpoint: self.checkpoint,
                    timeout: self.timeout,
                    localAddress: localAddress,
                    authentication: method
                )
            ]
        }
        let path = self.config ?? (StatePaths.homeDirectory() + "/.config/pop3/accounts.yaml")
        let accounts = try AccountsFile.load(path: path)
        let selected = self.targets.isEmpty ? accounts : try self.targets.map { name in
            guard let account = accounts.first(where: { $0.name == name }) else { throw ValidationError("no account \"\(name)\" in \(path)") }
            return account
        }
        guard !selected.isEmpty else { throw ValidationError("no accounts in \(path)") }
        if self.oauth2TokenCommand != nil {
            throw ValidationError("--oauth2-token-command goes with a URL; in the accounts file, use oauth2_token_command:")
        }
        // A password must not go out as a bearer token, nor a token as a password.
        if let method = authentication, let account = selected.first(where: { $0.authentication.usesBearerToken != method.usesBearerToken }) {
            throw ValidationError(
                "--auth \(method) does not fit account \(account.name), which logs in with \(account.authentication.usesBearerToken ? "an OAuth token" : "a password")"
            )
        }
        return try selected.map { account in
            do {
                return try FetchJob(
                    account: account,
                    retention: self.keep || self.keepDays != nil ? retention : nil,
                    maximumSize: self.maxSize,
                    checkpoint: self.checkpoint,
                    timeout: self.timeout,
                    localAddress: localAddress,
                    authentication: authentication
                )
            } catch {
                throw ValidationError("\(account.name): \(error)")
            }
        }
    }
}

struct Probe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what a POP3 server offers: greeting, capabilities, TLS, certificate chain with SHA-256 fingerprints, login mechanisms."
    )

    @Argument(help: "pop3s://HOST[:PORT] or pop3://HOST[:PORT] with --starttls.")
    var url: String
    @OptionGroup var tls: TLSOptions
    @Flag(help: "Print everything as one JSON object on stdout.")
    var json = false

    /// `--json`: the report with the server and how it was reached.
    struct JSONReport: Encodable {
        var server: String
        var security: String
        var report: ProbeReport
    }

    func run() async throws {
        // A probe needs no user: accept pop3s://HOST[:PORT] (a placeholder user is never sent).
        let target = try POP3URL.parse(self.url.contains("@") ? self.url : self.url.replacingOccurrences(of: "://", with: "://probe@"))
        let security = try self.tls.security(for: target)
        var configuration = POP3ClientConfiguration(host: target.host, port: target.port, security: security, trust: try self.tls.trust())
        configuration.replyTimeout = .seconds(30)
        let securityName = security == .implicitTLS ? "implicit TLS" : security == .startTLS ? "STLS" : "plaintext"
        if self.json {
            let report = await ServerProbe.run(configuration)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            let whole = JSONReport(server: "\(target.host):\(target.port)", security: securityName, report: report)
            print(String(decoding: try encoder.encode(whole), as: UTF8.self))
            if report.error != nil { throw ExitCode(1) }
            return
        }
        print("server: \(target.host):\(target.port) (\(securityName))")
        let report = await ServerProbe.run(configuration)
        if let greeting = report.greeting { print("greeting: \(greeting)") }
        if let tls = report.tls {
            print("tls: \(tls.version), cipher \(tls.cipher ?? "unknown"), ALPN \(tls.alpn ?? "none")")
            print("certificate: verified")
        }
        if report.greeting != nil {
            print("capabilities:")
            for capability in report.capabilities { print("  \(capability)") }
            print("login: " + (report.login.joined(separator: ", ").nonEmpty ?? "none offered"))
            print("auth auto: " + (report.automaticMethod.map { "\($0)" } ?? "none usable"))
        }
        if let error = report.error { print("error: \(error)") }
        if let chain = report.certificateChain {
            print("certificate chain (as presented):")
            for (index, certificate) in chain.enumerated() {
                print("  [\(index)] sha256:\(certificate.sha256)  (certificate, for --pin)")
                if let pin = certificate.publicKeySHA256 { print("      public key sha256:\(pin)  (for --pin)") }
                if let subject = certificate.subject { print("      subject: \(subject)") }
                if let issuer = certificate.issuer { print("      issuer:  \(issuer)") }
                if let validity = certificate.validity { print("      valid:   \(validity)") }
            }
        } else if let error = report.certificateChainError {
            print("certificate chain: unavailable (\(error))")
        }
        if report.error != nil { throw ExitCode(1) }
    }
}

extension String {
    var nonEmpty: String? { self.isEmpty ? nil : self }
}
