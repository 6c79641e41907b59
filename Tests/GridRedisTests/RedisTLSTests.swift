import Foundation
import GridKernel
import Testing

@testable import GridRedis

/// `rediss://` against a redis-server that speaks only TLS, with a self-signed certificate made here.
@Suite(.serialized) struct RedisTLSTests {
    static var enabled: Bool {
        ["/usr/bin/redis-server", "/usr/bin/openssl"].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
    }

    @Test(.enabled(if: enabled, "redis-server or openssl is not installed"))
    func tlsWithVerifiedSelfSignedCertificate() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-redis-tls-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let cert = directory.appendingPathComponent("cert.pem").path
        let key = directory.appendingPathComponent("key.pem").path
        try run("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert,
        ])
        let port = try freePort()
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        server.arguments = [
            "--port", "0", "--tls-port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no",
            "--dir", directory.path, "--logfile", directory.appendingPathComponent("redis.log").path, "--daemonize", "no",
        ]
        try server.run()
        defer { if server.isRunning { kill(server.processIdentifier, SIGKILL) } }

        let url = try BackendURL("rediss://localhost:\(port)/0?prefix=tls&retry_window=0&ca_file=\(cert)")
        let client = RedisClient(try RedisConfiguration(url))
        let store = RedisPayloadStore(client: client)
        // The server needs a moment to listen; connecting is retried until it answers.
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            do {
                try await store.put("greeting", Array("hello over TLS".utf8))
                break
            } catch let error as GridError where error.code == .unavailable && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        #expect(try await store.get("greeting") == Array("hello over TLS".utf8))
        await client.close()

        // Without the CA the certificate is not trusted: verification is on by default.
        let untrusted = RedisClient(try RedisConfiguration(BackendURL("rediss://localhost:\(port)/0?prefix=tls&retry_window=0")))
        await #expect(throws: GridError.self) { try await RedisPayloadStore(client: untrusted).get(["greeting"]) }
        await untrusted.close()
    }

    private func run(_ path: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw GridError(.internalError, "\(path) \(arguments) failed") }
    }

    private func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw GridError.unavailable("cannot find a free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
