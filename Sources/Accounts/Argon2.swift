#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `{ARGON2ID}` and `{ARGON2I}` fields (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`, as `doveadm pw` writes them), checked
/// with the system's libargon2 (Debian: `libargon2-1`), loaded when first needed. Without it such a field can never
/// match, and the reason is logged once by the verifier (``Argon2/unavailableReason``).
enum Argon2 {
    private typealias Verify = @convention(c) (UnsafePointer<CChar>, UnsafeRawPointer, Int) -> Int32

    private struct Library: @unchecked Sendable {
        let argon2i: Verify
        let argon2id: Verify
    }

    /// The shared object, or why it could not be loaded.
    private static let library: Result<Library, Argon2Unavailable> = {
        for name in ["libargon2.so.1", "libargon2.so"] {
            guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else { continue }
            guard let i = dlsym(handle, "argon2i_verify"), let id = dlsym(handle, "argon2id_verify") else {
                return .failure(Argon2Unavailable(reason: "\(name) lacks argon2i_verify/argon2id_verify"))
            }
            return .success(Library(argon2i: unsafeBitCast(i, to: Verify.self), argon2id: unsafeBitCast(id, to: Verify.self)))
        }
        return .failure(Argon2Unavailable(reason: "libargon2.so.1 not found (Debian: apt-get install libargon2-1)"))
    }()

    /// Nil when ARGON2 fields can be checked.
    static var unavailableReason: String? {
        if case .failure(let error) = Self.library { return error.reason }
        return nil
    }

    static func verify(password: String, encoded: String, scheme: String) -> PasswordHash.Outcome {
        let prefix = scheme == "ARGON2ID" ? "$argon2id$" : "$argon2i$"
        guard encoded.hasPrefix(prefix), case .success(let library) = Self.library else { return .unusable }
        let verify = scheme == "ARGON2ID" ? library.argon2id : library.argon2i
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
    }
}

struct Argon2Unavailable: Error {
    let reason: String
}
