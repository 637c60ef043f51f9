import Accounts
import Logging
import ServiceLifecycle
import UnixSignals

/// Re-reads the TLS certificate and key and the passwd-file on SIGHUP, without dropping sessions.
public struct ReloadService: Service {
    let tls: TLSProvider?
    let verifier: PasswdFileVerifier?
    let logger: Logger

    public init(tls: TLSProvider?, verifier: PasswdFileVerifier?, logger: Logger) {
        self.tls = tls
        self.verifier = verifier
        self.logger = logger
    }

    public func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            self.reload()
        }
    }

    public func reload() {
        if let tls = self.tls {
            do {
                try tls.reload()
                self.logger.notice("SIGHUP: TLS certificate and key reloaded")
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
    }
}
