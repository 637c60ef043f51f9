import POP3FuzzTargets

#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer entry point. The target is chosen with `POP3_FUZZ_TARGET` (command, response, sasl, dotstuffing,
/// handshake). Build: `swift build --sanitize=fuzzer --sanitize=address --product POP3Fuzzer
/// --scratch-path .build-fuzz -Xswiftc -DFUZZING`; run with `scripts/fuzz`.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let data = start.map { Array(UnsafeBufferPointer(start: $0, count: count)) } ?? []
    FuzzTarget.selected.run(data)
    return 0
}

extension FuzzTarget {
    static let selected: FuzzTarget = {
        let name = getenv("POP3_FUZZ_TARGET").map { String(cString: $0) } ?? "command"
        guard let target = FuzzTarget(rawValue: name) else {
            complain("POP3_FUZZ_TARGET must be one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))")
            exit(2)
        }
        return target
    }()
}

#if !FUZZING
/// Without libFuzzer: replay the files named on the command line (crash reproduction).
@main
struct Replay {
    static func main() {
        for path in CommandLine.arguments.dropFirst() {
            guard let file = fopen(path, "rb") else {
                complain("cannot open \(path)")
                exit(1)
            }
            var data: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = fread(&buffer, 1, buffer.count, file)
                if n <= 0 { break }
                data += buffer[0..<n]
            }
            fclose(file)
            FuzzTarget.selected.run(data)
            print("ok \(path)")
        }
    }
}
#endif

func complain(_ message: String) {
    let line = Array((message + "\n").utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
