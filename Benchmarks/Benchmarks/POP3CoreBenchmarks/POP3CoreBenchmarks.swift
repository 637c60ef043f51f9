// Micro-benchmarks of POP3Core's hot paths (issue 5): the command parser, the client's status-line parser, the
// dot-stuffer and unstuffer, the UIDL/LIST scan listing, and (issue 15) the connections' TLS buffers from
// IdleConnectionAllocator against malloc. Each drives the public API the way pop3d's
// SessionDriver or the client's POP3Connection does. Run with `scripts/microbench` (see Benchmarks/README.md).

import Benchmark
import NIOCore
import POP3Core
import POP3NIO

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Throughput of the byte-stream benchmarks, in MB/s (10^6 bytes of input per second), measured per iteration.
let megabytesPerSecond = BenchmarkMetric.custom("MB/s (input)", polarity: .prefersLarger, useScalingFactor: false)

/// Seconds per benchmark; `MICROBENCH_SECONDS` overrides (the machine is shared: keep it small).
let maxDuration: Duration = .seconds(Int(getenv("MICROBENCH_SECONDS").flatMap { String(cString: $0) }.flatMap { Int($0) } ?? 2))

/// The server reads stored messages and flushes its output in chunks of this size (SessionDriver.chunkSize).
let serverChunkSize = 64 * 1024
/// The client sees the server's bytes in TLS records of at most this size.
let clientChunkSize = 16 * 1024

/// A stored message as an MDA writes it: LF line endings, header, text body of ~72-column lines, and some lines
/// that start with "." (so stuffing happens), padded to exactly `size` bytes.
func sampleMessage(size: Int) -> [UInt8] {
    var text = """
        Return-Path: <sender@example.org>
        Delivered-To: alice@example.org
        Received: from mx.example.org (mx.example.org [192.0.2.1]) by mail.example.net with ESMTPS id 4Xyz
        Date: Tue, 1 Jul 2025 12:00:00 +0000
        From: Sender <sender@example.org>
        To: Alice <alice@example.org>
        Subject: Benchmark message
        Message-ID: <benchmark@example.org>
        MIME-Version: 1.0
        Content-Type: text/plain; charset=utf-8


        """
    var line = 0
    while text.utf8.count < size {
        line += 1
        if line % 40 == 0 {
            text += ".a line that starts with a dot and must be stuffed on the wire\n"
        } else {
            text += "Line \(line): the quick brown fox jumps over the lazy dog, 0123456789 abcdefghij.\n"
        }
    }
    var bytes = Array(text.utf8.prefix(size))
    bytes[bytes.count - 1] = UInt8(ascii: "\n")
    return bytes
}

/// The stored message as the server sends it (stuffed, CRLF, terminated), for the unstuffer.
func stuffedWireBytes(_ message: [UInt8]) -> [UInt8] {
    var stuffer = DotStuffer()
    var out = ByteBuffer()
    stuffer.encode(ByteBuffer(bytes: message), into: &out)
    stuffer.finish(into: &out)
    return Array(out.readableBytesView)
}

func throughput(bytes: Int, since start: ContinuousClock.Instant) -> Int {
    let elapsed = ContinuousClock.now - start
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    return seconds > 0 ? Int(Double(bytes) / seconds / 1e6) : 0
}

let benchmarks = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 3,
        maxDuration: maxDuration,
        maxIterations: 100_000
    )

    // MARK: Command parser (server): one line, as the framing hands it over (without CRLF).

    let maximumCommandBytes = POP3Defaults.maximumCommandLineLength - 2  // the limit counts the CRLF
    let junk = String(String(repeating: "Zq7!#xW~", count: 40).prefix(maximumCommandBytes))
    let commandLines: [(String, String)] = [
        ("USER", "USER alice@example.org"),
        ("PASS", "PASS correct horse battery staple"),
        ("RETR n", "RETR 1234"),
        ("UIDL", "UIDL"),
        ("LIST n", "LIST 42"),
        ("TOP n m", "TOP 17 10"),
        ("junk, \(maximumCommandBytes) bytes (longest accepted)", junk),
    ]
    let parser = CommandParser()
    for (name, line) in commandLines {
        let buffer = ByteBuffer(string: line)
        Benchmark(
            "CommandParser.parse: \(name)",
            configuration: .init(scalingFactor: .kilo)
        ) { benchmark in
            for _ in benchmark.scaledIterations {
                blackHole(try? parser.parse(buffer))
            }
        } setup: {
            // Measure what the name says: the junk line is refused as an unknown command, not for its length.
            if name.hasPrefix("junk") {
                precondition((try? parser.parse(buffer)) == nil && line.utf8.count == maximumCommandBytes)
            } else {
                precondition((try? parser.parse(buffer)) != nil, "\(line) should parse")
            }
        }
    }

    // MARK: Status-line parser (client): ServerStatusLine.parse on the bytes of one line, as POP3Connection reads it.

    let maximumStatusBytes = POP3Defaults.maximumResponseLineLength - 2
    let statusLines: [(String, String)] = [
        ("+OK STAT", "+OK 2 320"),
        ("+OK text", "+OK Logged in."),
        ("-ERR [IN-USE]", "-ERR [IN-USE] Mailbox is locked by another session."),
        ("+OK octets (RETR)", "+OK 51200 octets"),
        (
            "+OK \(maximumStatusBytes) bytes (longest accepted)",
            "+OK " + String(String(repeating: "server text ", count: 50).prefix(maximumStatusBytes - 4))
        ),
    ]
    for (name, line) in statusLines {
        let bytes = Array(line.utf8)
        Benchmark(
            "ServerStatusLine.parse: \(name)",
            configuration: .init(scalingFactor: .kilo)
        ) { benchmark in
            for _ in benchmark.scaledIterations {
                blackHole(try? ServerStatusLine.parse(bytes))
            }
        } setup: {
            precondition((try? ServerStatusLine.parse(bytes)) != nil, "\(line) should parse")
        }
    }

    // MARK: DotStuffer (server, RETR): stored chunks of 64 KiB in, output flushed at 64 KiB, as SessionDriver does.

    for (name, size) in [("50 KB", 50_000), ("1 MB", 1_000_000)] {
        let message = sampleMessage(size: size)
        let chunks: [ByteBuffer] = stride(from: 0, to: message.count, by: serverChunkSize).map {
            ByteBuffer(bytes: message[$0..<min($0 + serverChunkSize, message.count)])
        }
        Benchmark(
            "DotStuffer: \(name) message, 64 KiB chunks",
            configuration: .init(metrics: [.wallClock, .throughput, .mallocCountTotal, megabytesPerSecond])
        ) { benchmark in
            let start = ContinuousClock.now
            var stuffer = DotStuffer()
            var out = ByteBuffer()
            out.reserveCapacity(serverChunkSize + serverChunkSize / 8)
            for chunk in chunks {
                stuffer.encode(chunk, into: &out)
                if out.readableBytes >= serverChunkSize {
                    blackHole(out)
                    out = ByteBuffer()
                    out.reserveCapacity(serverChunkSize + serverChunkSize / 8)
                }
            }
            stuffer.finish(into: &out)
            blackHole(out)
            benchmark.measurement(megabytesPerSecond, throughput(bytes: size, since: start))
        }
    }

    // MARK: DotUnstuffer (client, RETR): the wire bytes in 16 KiB pieces, a fresh output buffer per piece, as
    // POP3Connection.retrieve does.

    for (name, size) in [("50 KB", 50_000), ("1 MB", 1_000_000)] {
        let wire = stuffedWireBytes(sampleMessage(size: size))
        let pieces: [ByteBuffer] = stride(from: 0, to: wire.count, by: clientChunkSize).map {
            ByteBuffer(bytes: wire[$0..<min($0 + clientChunkSize, wire.count)])
        }
        Benchmark(
            "DotUnstuffer: \(name) message, 16 KiB pieces",
            configuration: .init(metrics: [.wallClock, .throughput, .mallocCountTotal, megabytesPerSecond])
        ) { benchmark in
            let start = ContinuousClock.now
            var unstuffer = DotUnstuffer()
            var done = false
            for piece in pieces {
                var input = piece
                var out = ByteBuffer()
                done = unstuffer.decode(&input, into: &out)
                blackHole(out)
            }
            precondition(done)
            benchmark.measurement(megabytesPerSecond, throughput(bytes: wire.count, since: start))
        }
    }

    // MARK: Scan listing (server): the UIDL / LIST command on a 100,000-message maildrop, from the command line to
    // the whole response in one buffer, as SessionDriver does.

    let messageCount = 100_000
    let summaries = (0..<messageCount).map { index -> MaildropMessage in
        // Dovecot's default UIDL format, %08Xu%08Xv: 16 hex digits.
        let uid = String(UInt32(index + 1), radix: 16, uppercase: true)
        let uidl = String(repeating: "0", count: 8 - uid.count) + uid + "6650A1B2"
        return MaildropMessage(uniqueID: uidl, size: 2_000 + index % 1_000)
    }
    var configuration = ServerSession.Configuration()
    configuration.allowCleartextAuthentication = true
    var session = ServerSession(configuration: configuration, tlsActive: true)
    _ = session.receive(line: ByteBuffer(string: "USER alice"))
    _ = session.receive(line: ByteBuffer(string: "PASS secret"))
    _ = session.loginSucceeded(messages: summaries)
    precondition(session.isAuthenticated)
    let transaction = session

    for (command, kind) in [("UIDL", ServerSession.ListingKind.uidl), ("LIST", .list)] {
        let line = ByteBuffer(string: command)
        Benchmark(
            "ServerSession \(command) listing: 100,000 messages",
            configuration: .init(metrics: [.wallClock, .throughput, .mallocCountTotal, .peakMemoryResidentDelta])
        ) { benchmark in
            var session = transaction
            guard case .respondScanListing(let status, kind) = session.receive(line: line) else {
                fatalError("\(command) did not produce a scan listing")
            }
            var buffer = ByteBuffer()
            status.write(into: &buffer)
            session.writeScanListing(kind, into: &buffer)
            blackHole(buffer)
        }
    }

    // MARK: A connection's TLS buffers (issue 15): swift-nio-ssl's 32 KiB plaintext read buffer and 16 KiB outbound
    // buffer, each written with a command-sized 100 bytes and freed, as one short connection does. From the slot
    // arena each free is a madvise(MADV_DONTNEED) and each first touch a page fault; from malloc, neither.

    let command = [UInt8](repeating: UInt8(ascii: "x"), count: 100)
    for (name, allocator) in [
        ("slot arena (IdleConnectionAllocator)", IdleConnectionAllocator.make(maximumConnections: 1024)),
        ("malloc (ByteBufferAllocator())", ByteBufferAllocator()),
    ] {
        Benchmark(
            "Connection TLS buffers, 32 + 16 KiB, allocate, write 100 B, free: \(name)",
            configuration: .init(metrics: [.wallClock, .throughput, .mallocCountTotal])
        ) { benchmark in
            for _ in benchmark.scaledIterations {
                var plaintext = allocator.buffer(capacity: 32 * 1024)
                plaintext.writeBytes(command)
                var outbound = allocator.buffer(capacity: 16 * 1024)
                outbound.writeBytes(command)
                blackHole(plaintext)
                blackHole(outbound)
            }
        }
    }
}
