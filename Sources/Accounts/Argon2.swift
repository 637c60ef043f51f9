#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `{ARGON2ID}` and `{ARGON2I}` fields (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`, as `doveadm pw` writes them), checked
/// with the system's libargon2 (Debian: `libargon2-1`) or else libsodium (`libsodium23`, which Dovecot itself uses),
/// loaded when first needed. Without either such a field can never match, and the verifier logs why
/// (``Argon2/unavailableReason``).
enum Argon2 {
    private typealias Verify = @convention(c) (UnsafePointer<CChar>, UnsafeRawPointer, Int) -> Int32

    /// libsodium's `crypto_pwhash_str_verify(str, passwd, passwdlen)`: both variants, from the encoding.
    private typealias SodiumVerify = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UInt64) -> Int32
    private typealias SodiumInit = @convention(c) () -> Int32

    private enum Library: @unchecked Sendable {
        case argon2(argon2i: Verify, argon2id: Verify)
        case sodium(SodiumVerify)
    }

    /// libargon2, if the system has it.
    private static let libargon2: Library? = {
        for name in ["libargon2.so.1", "libargon2.so"] {
            guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else { continue }
            guard let i = dlsym(handle, "argon2i_verify"), let id = dlsym(handle, "argon2id_verify") else { return nil }
            return .argon2(argon2i: unsafeBitCast(i, to: Verify.self), argon2id: unsafeBitCast(id, to: Verify.self))
        }
        return nil
    }()

    /// libsodium, if the system has it (initialised once).
    private static let libsodium: Library? = {
        for name in ["libsodium.so.23", "libsodium.so"] {
            guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL),
                let initialize = dlsym(handle, "sodium_init"), let verify = dlsym(handle, "crypto_pwhash_str_verify")
            else { continue }
            // 0: initialised now, 1: already; -1: failed.
            guard unsafeBitCast(initialize, to: SodiumInit.self)() >= 0 else { continue }
            return .sodium(unsafeBitCast(verify, to: SodiumVerify.self))
        }
        return nil
    }()

    /// The library in use: libargon2, else libsodium, or why there is none.
    private static let library: Result<Library, Argon2Unavailable> = {
        if let library = Self.libargon2 ?? Self.libsodium { return .success(library) }
        return .failure(Argon2Unavailable(reason: "neither libargon2.so.1 nor libsodium.so.23 found (Debian: apt-get install libargon2-1)"))
    }()

    enum Backend { case libargon2, libsodium }

    /// Whether `backend` is on this system (tests).
    static func has(_ backend: Backend) -> Bool {
        backend == .libargon2 ? Self.libargon2 != nil : Self.libsodium != nil
    }

    /// Nil when ARGON2 fields can be checked.
    static var unavailableReason: String? {
        if case .failure(let error) = Self.library { return error.reason }
        return nil
    }

    /// `backend` picks a library (tests); by default the one in use.
    static func verify(password: String, encoded: String, scheme: String, backend: Backend? = nil) -> PasswordHash.Outcome {
        let prefix = scheme == "ARGON2ID" ? "$argon2id$" : "$argon2i$"
        let chosen: Library?
        switch backend {
        case .libargon2?: chosen = Self.libargon2
        case .libsodium?: chosen = Self.libsodium
        case nil: chosen = try? Self.library.get()
        }
        guard encoded.hasPrefix(prefix), let library = chosen else { return .unusable }
        switch library {
        case .argon2(let argon2i, let argon2id):
            let verify = scheme == "ARGON2ID" ? argon2id : argon2i
            let bytes = Array(password.utf8)
            let result = encoded.withCString { encoded in
                bytes.withUnsafeBytes { password in
                    verify(encoded, password.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, password.count)
                }
            }
            switch result {
            case 0: return .match  // ARGON2_OK
            case -35: return .mismatch  // ARGON2_VERIFY_MISMATCH
            default: return .unusable  // a malformed field or an allocation failure
            }
        case .sodium(let verify):
            // libsodium does not tell a mismatch from a malformed string: both are "no match".
            let result = encoded.withCString { encoded in
                password.withCString { verify(encoded, $0, UInt64(password.utf8.count)) }
            }
            return result == 0 ? .match : .mismatch
        }
    }
}

struct Argon2Unavailable: Error {
    let reason: String
}
