import ArgumentParser
import Foundation
import MailRetriever
import POP3Client
import SystemIO

struct Setup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Find the POP3 server of an e-mail address, ask whether to delete or keep mail on the server, check the login (STAT only) and write the account.",
        discussion: """
            The server is found as Thunderbird finds it: the domain's autoconfig document, the _pop3s._tcp SRV record (RFC 6186), \
            then pop.DOMAIN and mail.DOMAIN on 995; each candidate is probed (TLS, certificate verified). Nothing is downloaded or \
            deleted. Non-interactive with --password-file or --password-command and one of --delete, --keep, --keep-days.
            """
    )

    @Argument(help: "The e-mail address, e.g. alice@example.com.")
    var address: String
    @Option(help: "Accounts file to add the account to (default ~/.config/pop3/accounts.yaml).")
    var config: String?
    @Option(help: "The account's name in the accounts file (default: the address).")
    var name: String?
    @Option(help: "Deliver into this Maildir (default ~/Mail/DOMAIN).")
    var maildir: String?
    @Option(name: .customLong("password-file"), help: "A file (mode 0600) whose first line is the password; else asked on the terminal and kept 0600 beside the accounts file.")
    var passwordFile: String?
    @Option(name: .customLong("password-command"), help: "A command whose first output line is the password (e.g. pass show mail/alice).")
    var passwordCommand: String?
    @Flag(help: "Delete messages from the server once stored here (POP3's default).")
    var delete = false
    @Flag(help: "Leave messages on the server.")
    var keep = false
    @Option(name: .customLong("keep-days"), help: "Leave messages on the server for N days, then delete them (Outlook and Thunderbird offer 14).")
    var keepDays: Int?
    @Option(name: .customLong("autoconfig-url"), help: "Look up https://BASE/mail/config-v1.1.xml instead of the domain's autoconfig names.")
    var autoconfigURL: String?
    @Option(name: .customLong("dns-server"), help: "Ask this DNS server (HOST:PORT) for the SRV record instead of /etc/resolv.conf's.")
    var dnsServer: String?
    @Option(name: .customLong("ca-file"), help: "Trust the certificates in this PEM file (instead of the system store), for the server and the autoconfig document.")
    var caFile: String?
    @Option(help: "Log in with OAuth 2.0 instead of a password: microsoft, google or custom (then the endpoints below); the login flow runs now and its tokens are kept 0600.")
    var provider: String?
    @Option(name: .customLong("oauth2-client-id"), help: "The client id registered with the provider (required with --provider).")
    var oauth2ClientID: String?
    @Option(name: .customLong("oauth2-tenant"), help: "Microsoft: the tenant (default common).")
    var oauth2Tenant: String?
    @Option(name: .customLong("oauth2-token-endpoint"), help: "custom: the token endpoint.")
    var oauth2TokenEndpoint: String?
    @Option(name: .customLong("oauth2-device-endpoint"), help: "custom: the device authorization endpoint (device flow).")
    var oauth2DeviceEndpoint: String?
    @Option(name: .customLong("oauth2-authorization-endpoint"), help: "custom: the authorization endpoint (authorization code flow).")
    var oauth2AuthorizationEndpoint: String?
    @Option(name: .customLong("oauth2-scope"), help: "The scope to ask for (custom; the presets know theirs).")
    var oauth2Scope: String?

    func validate() throws {
        guard AddressCheck.plausible(self.address) else { throw ValidationError("\(self.address) is not an e-mail address") }
        if [self.delete, self.keep, self.keepDays != nil].filter({ $0 }).count > 1 {
            throw ValidationError("give one of --delete, --keep, --keep-days")
        }
        if let days = self.keepDays, days < 1 { throw ValidationError("--keep-days must be 1 or more") }
        if self.passwordFile != nil && self.passwordCommand != nil { throw ValidationError("give --password-file or --password-command, not both") }
        if self.provider != nil && (self.passwordFile != nil || self.passwordCommand != nil) {
            throw ValidationError("--provider logs in with OAuth 2.0: no password is needed")
        }
        if self.provider != nil && self.oauth2ClientID == nil { throw ValidationError("--provider needs --oauth2-client-id") }
    }

    func run() async throws {
        let interactive = isatty(STDIN_FILENO) == 1
        let trust: TrustPolicy = self.caFile.map { .caFile($0) } ?? .system
        let discovery = AccountDiscovery(address: self.address, autoconfigBase: self.autoconfigURL, dnsServer: self.dnsServer, trust: trust)
        let say: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
        say("looking for the POP3 server of \(self.address):")
        let candidates = await discovery.candidates { say("  \($0)") }
        var chosen: AccountDiscovery.Candidate?
        var probe: ProbeReport?
        for candidate in candidates {
            var configuration = POP3ClientConfiguration(host: candidate.host, port: candidate.port, security: .implicitTLS, trust: trust)
            configuration.connectTimeout = .seconds(5)
            configuration.replyTimeout = .seconds(15)
            let report = await ServerProbe.run(configuration)
            if report.error == nil, report.tls != nil {
                say("  probe \(candidate): \(report.tls!.version), certificate verified, login: \(report.login.joined(separator: ", "))")
                chosen = candidate
                probe = report
                break
            }
            say("  probe \(candidate): \(report.error ?? "no TLS")")
        }
        guard let server = chosen, let report = probe else {
            say("pop3: no POP3 server over TLS found for \(self.address); give the server by hand with pop3 fetch pop3s://USER@HOST")
            throw ExitCode(1)
        }
        let user = server.username ?? self.address
        // The user name may come from the remote autoconfig document: it must be a plain name before it goes into a
        // URL and the accounts file.
        guard AccountDiscovery.isUsableUserName(user) else {
            say("pop3: the server's autoconfig document names an unusable user name; nothing was written")
            throw ExitCode(1)
        }
        let offersOAuth = report.login.contains { $0.contains("OAUTHBEARER") || $0.contains("XOAUTH2") }
        say("found: \(server.host):\(server.port), user \(user), login \(self.provider != nil ? "OAuth 2.0" : report.automaticMethod.map { "\($0)" } ?? "none usable")")
        if self.provider != nil && !offersOAuth {
            say("pop3: the server does not offer OAUTHBEARER or XOAUTH2; set the account up with a password")
            throw ExitCode(1)
        }
        guard self.provider != nil || report.automaticMethod != nil else {
            say("pop3: the server offers no login pop3 can use with a password\(offersOAuth ? " (it wants OAuth 2.0: give --provider and --oauth2-client-id)" : "")")
            throw ExitCode(1)
        }

        // The one question POP3 users get wrong.
        var keep = self.keep
        var keepDays = self.keepDays
        if !self.delete && !self.keep && self.keepDays == nil {
            if interactive {
                print("After downloading, should messages be deleted from the server (d), kept (k), or kept N days (a number)? [14] ", terminator: "")
                fflush(nil)
                let answer = (readLine() ?? "").trimmingCharacters(in: .whitespaces).lowercased()
                switch answer {
                case "d", "delete": break
                case "k", "keep": keep = true
                case "": keepDays = 14
                default:
                    guard let days = Int(answer), days > 0 else { throw ValidationError("answer d, k or a number of days") }
                    keepDays = days
                }
            } else {
                keepDays = 14
                say("keeping messages on the server for 14 days (give --delete, --keep or --keep-days N to choose)")
            }
        }

        let accountsPath = self.config ?? AccountsFile.defaultPath()
        let accountName = self.name ?? self.address
        let encodedUser = user.addingPercentEncoding(withAllowedCharacters: CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+")) ?? user
        let url = "pop3s://\(encodedUser)@\(server.host):\(server.port)"
        // A name taken already is refused before anything is written (password file, tokens).
        try Self.checkNameFree(accountName, in: accountsPath)
        if self.provider != nil {
            let method = report.login.contains { $0.contains("OAUTHBEARER") } ? "oauthbearer" : "xoauth2"
            try await self.setUpOAuth(url: url, method: method, accountName: accountName, accountsPath: accountsPath, domain: discovery.domain,
                                      keep: keep, keepDays: keepDays, trust: trust, server: server, user: user, say: say)
            return
        }
        // The password: a file or command given, else asked and kept 0600 beside the accounts file (written only once
        // the login works).
        var promptedPasswordFile: String?
        var passwordLine: String
        let password: String
        if let file = self.passwordFile {
            password = try PasswordSource.file(file).readPassword()
            passwordLine = "password_file: \(Self.yaml(file))"
        } else if let command = self.passwordCommand {
            password = try PasswordSource.command(command).readPassword()
            passwordLine = "password_command: \(Self.yaml(command))"
        } else {
            guard interactive else { throw ValidationError("--password-file or --password-command is needed without a terminal") }
            password = try PasswordSource.prompt.readPassword(prompt: "Password for \(user): ")
            let file = FileSystem.join((accountsPath as NSString).deletingLastPathComponent, Self.safeFileName(accountName) + ".pass")
            promptedPasswordFile = file
            passwordLine = "password_file: \(Self.yaml(file))"
        }

        // The login, checked with STAT only: nothing is downloaded or deleted.
        var configuration = POP3ClientConfiguration(host: server.host, port: server.port, security: .implicitTLS, trust: trust)
        configuration.replyTimeout = .seconds(30)
        do {
            let connection = try await POP3Connection.connect(configuration)
            try await connection.login(user: user, password: password)
            let (count, size) = try await connection.stat()
            try await connection.quit()
            say("login works: \(count) messages (\(size) octets) on the server")
        } catch {
            say("pop3: login as \(user) at \(server.host):\(server.port) failed: \(error); nothing was written")
            throw ExitCode(1)
        }
        if let file = promptedPasswordFile {
            _ = try FileSystem.makeDirectories((file as NSString).deletingLastPathComponent, mode: 0o700)
            try FileSystem.atomicReplace(file, with: Array((password + "\n").utf8), mode: 0o600)
        }

        var lines = ["  \(Self.yaml(accountName)):", "    url: \(Self.yaml(url))", "    \(passwordLine)"]
        if case .caFile(let path) = trust { lines.append("    ca_file: \(Self.yaml(path))") }
        lines.append("    maildir: \(Self.yaml(self.maildir ?? "~/Mail/\(discovery.domain)"))")
        if let keepDays { lines.append("    keep_days: \(keepDays)") } else if keep { lines.append("    keep: true") }
        try Self.addAccount(lines, named: accountName, to: accountsPath)
        say("added account \(accountName) to \(accountsPath); fetch with: pop3 fetch \(accountsPath == AccountsFile.defaultPath() ? "" : "--config \(accountsPath) ")\(Self.yaml(accountName))")
    }

    /// `--provider`: the account's lines with the provider keys, parsed as the accounts file would parse them, the
    /// login flow run now (tokens kept 0600 in the state folder), the login checked with STAT, then the account added.
    func setUpOAuth(
        url: String, method: String, accountName: String, accountsPath: String, domain: String, keep: Bool, keepDays: Int?,
        trust: TrustPolicy, server: AccountDiscovery.Candidate, user: String, say: (String) -> Void
    ) async throws {
        var lines = ["  \(Self.yaml(accountName)):", "    url: \(Self.yaml(url))", "    auth: \(method)", "    provider: \(Self.yaml(self.provider!))",
                     "    oauth2_client_id: \(Self.yaml(self.oauth2ClientID!))"]
        for (key, value) in [("oauth2_tenant", self.oauth2Tenant), ("oauth2_token_endpoint", self.oauth2TokenEndpoint),
                             ("oauth2_device_endpoint", self.oauth2DeviceEndpoint), ("oauth2_authorization_endpoint", self.oauth2AuthorizationEndpoint),
                             ("oauth2_scope", self.oauth2Scope)] {
            if let value { lines.append("    \(key): \(Self.yaml(value))") }
        }
        if case .caFile(let path) = trust { lines.append("    ca_file: \(Self.yaml(path))") }
        lines.append("    maildir: \(Self.yaml(self.maildir ?? "~/Mail/\(domain)"))")
        if let keepDays { lines.append("    keep_days: \(keepDays)") } else if keep { lines.append("    keep: true") }
        let account: AccountConfiguration
        do {
            guard let parsed = try AccountsFile.parse(yaml: "accounts:\n" + lines.joined(separator: "\n") + "\n", path: accountsPath).first,
                let provider = parsed.oauth2
            else { throw ValidationError("the OAuth 2.0 settings did not make an account") }
            account = parsed
            let flows = OAuth2Flows(provider: provider) { text in FileHandle.standardError.write(Data("pop3: \(text)\n".utf8)) }
            let now: @Sendable () -> Int64 = { FetchClock.system.unixSeconds() }
            let tokens = try await (provider.flow == .device ? flows.deviceFlow(now: now) : flows.authorizationCodeFlow(now: now))
            guard let accessToken = tokens.accessToken, tokens.refreshToken != nil else {
                throw OAuth2Error.server("no access and refresh token were issued (the scope may lack offline_access)")
            }
            var configuration = POP3ClientConfiguration(host: server.host, port: server.port, security: .implicitTLS, trust: trust)
            configuration.authentication = account.authentication
            configuration.replyTimeout = .seconds(30)
            let connection = try await POP3Connection.connect(configuration)
            try await connection.login(user: user, bearerToken: accessToken)
            let (count, size) = try await connection.stat()
            try await connection.quit()
            say("login works: \(count) messages (\(size) octets) on the server")
            try tokens.save(account.url.accountKey, stateDirectory: try StatePaths.directory())
        } catch let error as ValidationError {
            throw error
        } catch {
            say("pop3: OAuth 2.0 set-up of \(user) at \(server.host):\(server.port) failed: \(error); nothing was written")
            throw ExitCode(1)
        }
        try Self.addAccount(lines, named: accountName, to: accountsPath)
        say("added account \(accountName) to \(accountsPath) (OAuth 2.0; pop3 fetch renews the token); fetch with: pop3 fetch --config \(accountsPath) \(Self.yaml(accountName))")
    }

    /// Refuses a name the accounts file already has (an unreadable file is an error, never "no file").
    static func checkNameFree(_ name: String, in path: String) throws {
        guard let bytes = try FileSystem.readFile(path, limit: 1 << 20) else { return }
        try Self.checkNameFree(name, inText: String(decoding: bytes, as: UTF8.self), path: path)
    }

    private static func checkNameFree(_ name: String, inText text: String, path: String) throws {
        if let accounts = try? AccountsFile.parse(yaml: text, path: path), accounts.contains(where: { $0.name == name }) {
            throw ValidationError("\(path) already has an account \(name) (give --name)")
        }
    }

    /// Inserts the account right under `accounts:` (the file is created if missing), then checks the whole file
    /// loads; on any problem the file is left as it was.
    static func addAccount(_ lines: [String], named name: String, to path: String) throws {
        let before = try FileSystem.readFile(path, limit: 1 << 20).map { String(decoding: $0, as: UTF8.self) }
        var text = before ?? "# pop3 accounts (see pop3(1)); written by pop3 setup\naccounts:\n"
        if let existing = before { try Self.checkNameFree(name, inText: existing, path: path) }
        var rows = text.components(separatedBy: "\n")
        guard let index = rows.firstIndex(where: { $0.hasPrefix("accounts:") }) else {
            throw ValidationError("\(path) has no 'accounts:' line to add to")
        }
        rows.insert(contentsOf: lines, at: index + 1)
        text = rows.joined(separator: "\n")
        _ = try FileSystem.makeDirectories((path as NSString).deletingLastPathComponent, mode: 0o700)
        try FileSystem.atomicReplace(path, with: Array(text.utf8), mode: 0o600)
        do {
            _ = try AccountsFile.load(path: path)
        } catch {
            if let before { try? FileSystem.atomicReplace(path, with: Array(before.utf8), mode: 0o600) } else { unlink(path) }
            throw ValidationError("the account would not load (\(error)); \(path) is unchanged")
        }
    }

    /// A YAML scalar, quoted when it needs to be.
    static func yaml(_ text: String) -> String {
        let plain = text.allSatisfy { $0.isLetter || $0.isNumber || "._-/~+".contains($0) } && !text.isEmpty && !"~".contains(text.first!)
        if plain { return text }
        return "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    static func safeFileName(_ text: String) -> String {
        String(text.map { $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "@" ? $0 : "_" })
    }
}

enum AddressCheck {
    static func plausible(_ text: String) -> Bool {
        let parts = text.split(separator: "@", omittingEmptySubsequences: false)
        return parts.count == 2 && !parts[0].isEmpty && parts[1].contains(".") && !text.contains(where: { $0.isWhitespace })
            && parts[1].allSatisfy { $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }
    }
}
