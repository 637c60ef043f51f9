import Accounts
import Logging
import ServiceLifecycle
import UnixSignals

/// Re-reads the TLS certificate and key, the passwd-file and the OAuth 2.0 JWKS on SIGHUP, without dropping sessions.
public struct ReloadService: Service {
    let tls: TLSProvider?
    let verifier: PasswdFileVerifier?
    let oauth: OAuth2Validator?
    let metrics: ServerMetrics
    let notifier: SystemdNotifier?
    let logger: Logger
    /// The configuration file read again at each reload, and what applies the new configuration (returns the keys
    /// applied and those that need a restart).
    let configurationFile: String?
    let reconfigure: (@Sendable (ServerConfiguration) -> (applied: [String], needRestart: [String]))?

    public init(
        tls: TLSProvider?,
        verifier: PasswdFileVerifier?,
        oauth: OAuth2Validator? = nil,
        metrics: ServerMetrics = .disabled,
        notifier: SystemdNotifier? = nil,
        configurationFile: String? = nil,
        reconfigure: (@Sendable (ServerConfiguration) -> (applied: [String], needRestart: [String]))? = nil,
        logger: Logger
    ) {
        self.configurationFile = configurationFile
        self.reconfigure = reconfigure
        self.metrics = metrics
        self.notifier = notifier
        self.tls = tls
        self.verifier = verifier
        self.oauth = oauth
        self.logger = logger
    }

    public func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            self.reload()
        }
    }

    public func reload() {
        self.notifier?.reloading()
        defer { self.notifier?.ready("reloaded") }
        if let file = self.configurationFile, let reconfigure = self.reconfigure {
            let logger = self.logger
            Task {
                do {
                    let new = try await ServerConfiguration.load(file: file)
                    let (applied, restart) = reconfigure(new)
                    logger.notice("SIGHUP: configuration checked", metadata: ["applied": "\(applied.isEmpty ? "nothing changed" : applied.joined(separator: ", "))"])
                    if !restart.isEmpty {
                        logger.warning("SIGHUP: changes that take effect only after a restart", metadata: ["keys": "\(restart.joined(separator: ", "))"])
                    }
                } catch {
                    logger.error("SIGHUP: configuration not reloaded, the running one stays", metadata: ["error": "\(error)"])
                }
            }
        }
        if let tls = self.tls {
            do {
                try tls.reload()
                self.logger.notice("SIGHUP: TLS certificate and key reloaded")
                self.metrics.certificateExpiry(tls.notAfter)
                for warning in tls.certificateWarnings {
                    self.logger.warning("TLS certificate: \(warning.text)")
                }
            } catch {
                self.logger.error("SIGHUP: TLS reload failed, keeping the previous certificate", metadata: ["error": "\(error)"])
            }
        }
        if let verifier = self.verifier {
            do {
                let changed = try verifier.reloadIfChanged()
                self.logger.notice("SIGHUP: passwd-file checked", metadata: ["changed": "\(changed)"])
            } catch {
                self.logger.error("SIGHUP: passwd-file reload failed, keeping the previous one", metadata: ["error": "\(error)"])
            }
        }
        if let oauth = self.oauth {
            let logger = self.logger
            @Sendable func report(_ error: (any Error)?) {
                if let error {
                    logger.error("SIGHUP: JWKS reload failed, keeping the previous keys", metadata: ["error": "\(error)"])
                } else {
                    logger.notice("SIGHUP: OAuth 2.0 JWKS reloaded", metadata: ["keys": "\(oauth.keyCount)"])
                }
            }
            if oauth.settings.jwksIsURL {
                // Fetched in the background; the keys in use stay until the new set has arrived.
                Task {
                    do { try await oauth.refresh(); report(nil) } catch { report(error) }
                }
            } else {
                do { try oauth.reload(); report(nil) } catch { report(error) }
            }
        }
    }
}
