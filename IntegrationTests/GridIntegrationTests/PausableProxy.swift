import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A TCP proxy on 127.0.0.1 that a test can pause: while paused it accepts connections and reads what
/// clients send but forwards nothing either way, as a network partition would; resumed, it forwards
/// what it held. One thread per direction of each connection (tests open a handful).
final class PausableProxy: Sendable {
    let port: Int
    private let target: Int
    private let listener: Int32
    private let state = Mutex<(paused: Bool, heldBytes: Int, closed: Bool)>((false, 0, false))

    /// Starts a proxy to 127.0.0.1:`target` on a free port.
    init(target: Int) throws {
        self.target = target
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 64) == 0 else { throw ProxyError(text: "cannot listen: errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        let listener = self.listener
        Thread.detachNewThread { [self] in
            while true {
                let client = accept(listener, nil, nil)
                guard client >= 0 else { return }
                let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                var remote = Self.loopback(port: target)
                let connected = withUnsafePointer(to: &remote) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
                guard connected == 0 else {
                    Glibc.close(client)
                    Glibc.close(server)
                    continue
                }
                Thread.detachNewThread { self.pump(from: client, to: server, counting: true) }
                Thread.detachNewThread { self.pump(from: server, to: client, counting: false) }
            }
        }
    }

    /// Stops forwarding (what clients send is held).
    func pause() { state.withLock { $0 = ($0.paused ? $0 : (true, 0, $0.closed)) } }

    /// Forwards again, what was held first.
    func resume() { state.withLock { $0.paused = false } }

    /// Bytes clients sent since the last pause, held or not.
    var bytesSincePause: Int { state.withLock { $0.heldBytes } }

    /// Stops accepting connections.
    func close() {
        state.withLock { $0.closed = true }
        shutdown(listener, Int32(SHUT_RDWR))
        Glibc.close(listener)
    }

    private func pump(from source: Int32, to destination: Int32, counting: Bool) {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        defer {
            shutdown(destination, Int32(SHUT_WR))
            Glibc.close(source)
        }
        while true {
            let count = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
            guard count > 0 else { return }
            if counting { state.withLock { $0.heldBytes += count } }
            // While paused, hold the bytes: a partition delays, it does not drop.
            while state.withLock({ $0.paused && !$0.closed }) { usleep(2_000) }
            var sent = 0
            while sent < count {
                let written = buffer.withUnsafeBytes { write(destination, $0.baseAddress! + sent, count - sent) }
                guard written > 0 else { return }
                sent += written
            }
        }
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr = in_addr(s_addr: inet_addr("127.0.0.1"))
        return address
    }
}

struct ProxyError: Error, CustomStringConvertible {
    let text: String
    var description: String { text }
}
