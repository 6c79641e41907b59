import Dispatch
import Foundation
import GridKernel
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Wake-ups across the processes that share one grid file, over Unix datagram sockets.
///
/// SQLite tells no one of a commit, so a process waiting for messages or completions would otherwise
/// poll. Each ``SQLiteDatabase`` that waits binds one datagram socket in a directory next to the file,
/// `<file>-wake/<pid>-<random>.sock` (created 0700; when that path is longer than a socket address
/// holds, `/tmp/htc-wake-<device>-<inode>` of the file instead). After committing an enqueue or a
/// release (``Events/arrivals``) or a transition into a terminal state (``Events/completions``), a
/// writer sends one byte saying which to every socket in the directory, without blocking; the
/// receiving database turns it into ``ArrivalSignal/signal()`` of ``arrivals`` or ``completions``, and
/// its waiters look for themselves (a spurious wake-up costs one read). The writer's list of sockets
/// is read again when the directory changed, at most 100 ms after the last read, and when a send
/// fails; a socket nobody listens on any more (its process was killed) is removed by the first writer
/// that finds it.
///
/// When the sockets cannot be used (another platform, a directory owned by another user, no
/// permission) waiters only poll: every wait also has a fallback poll.
///
/// Isolation: the socket state is behind a `Mutex`; the listening socket is read by a dispatch
/// source on its own queue, which only rings the two signals.
final class SQLiteWakeUps: Sendable {
    /// What a writer announces.
    struct Events: OptionSet, Sendable {
        let rawValue: UInt8
        /// Messages became ready (an enqueue, a release).
        static let arrivals = Events(rawValue: 1)
        /// Tasks became terminal.
        static let completions = Events(rawValue: 2)
    }

    /// Rung when this database or another process enqueued or released messages.
    let arrivals = ArrivalSignal()
    /// Rung when this database or another process made tasks terminal.
    let completions = ArrivalSignal()
    /// The directory of the sockets; `nil` when wake-ups across processes are unavailable.
    let directory: String?

    private struct Listener {
        let name: String
        let source: any DispatchSourceRead
    }

    private struct Peer {
        let name: String
        let address: SocketAddress
    }

    private struct State {
        var listener: Listener?
        var listenFailed = false
        var sender: Int32 = -1
        var peers: [Peer] = []
        var peersRead: ContinuousClock.Instant?
        #if canImport(Glibc)
        var directoryStamp: DirectoryStamp?
        #endif
        var closed = false
    }

    private let state = Mutex(State())
    private let logger: Logger

    /// How long a writer keeps its list of sockets when the directory seems unchanged.
    static let peerListLifetime = Duration.milliseconds(100)

    /// The longest socket name this type makes: `<pid>-<16 hex digits>.sock`.
    private static let longestName = 10 + 1 + 16 + 5

    init(databasePath: String, logger: Logger) {
        self.logger = logger
        directory = Self.directory(for: databasePath)
    }

    deinit {
        close()
    }

    // MARK: - Waiting side

    /// Binds this database's socket and starts reading it, once; later calls do nothing. Call before
    /// the first look of a wait, so that a write committed after the look reaches the socket.
    ///
    /// - Returns: whether the socket listens (when not, waiters only poll).
    @discardableResult
    func listen() -> Bool {
        #if canImport(Glibc)
        guard let directory else { return false }
        return state.withLock { state in
            if state.listener != nil { return true }
            if state.listenFailed || state.closed { return false }
            do {
                state.listener = try bind(in: directory)
                return true
            } catch {
                state.listenFailed = true
                logger.debug(
                    "no wake-up socket: waits poll", metadata: ["directory": "\(directory)", "error": "\(error)"])
                return false
            }
        }
        #else
        return false
        #endif
    }

    // MARK: - Writing side

    /// Rings this database's signals for `events` and sends them to every other listening socket of
    /// the file. Call after the write committed.
    func notify(_ events: Events) {
        if events.contains(.arrivals) { arrivals.signal() }
        if events.contains(.completions) { completions.signal() }
        #if canImport(Glibc)
        guard let directory else { return }
        let (sender, peers) = state.withLock { state -> (Int32, [Peer]) in
            guard !state.closed else { return (-1, []) }
            if state.sender < 0 {
                state.sender = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            }
            refreshPeers(&state, directory: directory, force: false)
            return (state.sender, state.peers)
        }
        guard sender >= 0, !peers.isEmpty else { return }
        var byte = events.rawValue
        var gone = false
        for peer in peers {
            let sent = peer.address.withSockaddr { address, length in
                sendto(sender, &byte, 1, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL), address, length)
            }
            guard sent < 0 else { continue }
            switch errno {
            case ECONNREFUSED:
                // The file is left by a process that died without closing (SIGKILL): nobody will read it.
                unlink(directory + "/" + peer.name)
                gone = true
            case ENOENT:
                gone = true
            default:
                break  // EAGAIN: the peer has unread wake-ups already.
            }
        }
        if gone {
            state.withLock { refreshPeers(&$0, directory: directory, force: true) }
        }
        #endif
    }

    /// Stops listening, removes this database's socket file and closes the sockets. Waiters fall back
    /// to polling.
    func close() {
        #if canImport(Glibc)
        let (name, sender) = state.withLock { state -> (String?, Int32) in
            state.closed = true
            let name = state.listener?.name
            state.listener?.source.cancel()  // Its cancel handler closes the socket.
            state.listener = nil
            defer { state.sender = -1 }
            return (name, state.sender)
        }
        if let name, let directory {
            unlink(directory + "/" + name)
            rmdir(directory)  // Only when no other process listens; harmless otherwise.
        }
        if sender >= 0 { Glibc.close(sender) }
        #endif
    }

    // MARK: - Sockets

    #if canImport(Glibc)
    /// Creates the directory if needed and binds a new socket in it; retried when another process
    /// removed the (empty) directory between the two.
    private func bind(in directory: String) throws -> Listener {
        var attempts = 0
        while true {
            attempts += 1
            try Self.makeDirectory(directory)
            let name = "\(getpid())-\(String(UInt64.random(in: .min ... .max), radix: 16)).sock"
            guard let address = SocketAddress(path: directory + "/" + name) else {
                throw WakeUpError("socket path \(directory)/\(name) is too long")
            }
            let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { throw WakeUpError("socket: \(String(cString: strerror(errno)))") }
            let bound = address.withSockaddr { Glibc.bind(fd, $0, $1) }
            if bound != 0 {
                let code = errno
                Glibc.close(fd)
                if code == ENOENT && attempts < 3 { continue }
                throw WakeUpError("bind \(directory)/\(name): \(String(cString: strerror(code)))")
            }
            let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: DispatchQueue(label: "htc-grid.sqlite-wake-ups"))
            let arrivals = self.arrivals
            let completions = self.completions
            source.setEventHandler {
                var events: UInt8 = 0
                var byte: UInt8 = 0
                while recv(fd, &byte, 1, Int32(MSG_DONTWAIT)) > 0 { events |= byte }
                // A byte this version does not know still wakes both kinds of waiters: they re-check.
                let known = Events(rawValue: events)
                if known.contains(.arrivals) || events & ~3 != 0 { arrivals.signal() }
                if known.contains(.completions) || events & ~3 != 0 { completions.signal() }
            }
            source.setCancelHandler { Glibc.close(fd) }
            source.resume()
            return Listener(name: name, source: source)
        }
    }

    /// Creates `directory` 0700 if it does not exist, and accepts it only if it is a directory of this
    /// user that no one else may enter (so no other user can plant sockets to send or receive).
    private static func makeDirectory(_ directory: String) throws {
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw WakeUpError("mkdir \(directory): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard lstat(directory, &info) == 0 else { throw WakeUpError("stat \(directory): \(String(cString: strerror(errno)))") }
        guard info.st_mode & S_IFMT == S_IFDIR, info.st_uid == geteuid(), info.st_mode & 0o077 == 0 else {
            throw WakeUpError("\(directory) is not a directory of this user with mode 0700")
        }
    }

    /// Reads the sockets of the directory (all but this database's own) again when `force`, when the
    /// directory changed since the last read, or when the last read is older than ``peerListLifetime``.
    private func refreshPeers(_ state: inout State, directory: String, force: Bool) {
        var info = stat()
        let stamp = stat(directory, &info) == 0 ? DirectoryStamp(info) : nil
        let now = ContinuousClock.now
        if !force, stamp == state.directoryStamp, let read = state.peersRead, now - read < Self.peerListLifetime {
            return
        }
        state.peersRead = now
        state.directoryStamp = stamp
        guard stamp != nil, let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else {
            state.peers = []
            return
        }
        let own = state.listener?.name
        state.peers = names.compactMap { name in
            guard name.hasSuffix(".sock"), name != own, let address = SocketAddress(path: directory + "/" + name) else { return nil }
            return Peer(name: name, address: address)
        }
    }
    #endif

    /// The directory of the sockets for the database file at `path`, or `nil` if there is none.
    static func directory(for path: String) -> String? {
        #if canImport(Glibc)
        guard let resolved = realpath(path, nil) else { return nil }
        let file = String(cString: resolved)
        free(resolved)
        let near = file + "-wake"
        if near.utf8.count + 1 + longestName < SocketAddress.capacity { return near }
        var info = stat()
        guard stat(file, &info) == 0 else { return nil }
        return "/tmp/htc-wake-\(String(UInt64(info.st_dev), radix: 16))-\(String(UInt64(info.st_ino), radix: 16))"
        #else
        return nil
        #endif
    }
}

#if canImport(Glibc)
/// What tells a writer that the socket directory changed: its inode and modification time.
private struct DirectoryStamp: Equatable {
    let inode: UInt64
    let seconds: Int
    let nanoseconds: Int

    init(_ info: stat) {
        inode = UInt64(info.st_ino)
        seconds = Int(info.st_mtim.tv_sec)
        nanoseconds = Int(info.st_mtim.tv_nsec)
    }
}
#endif

/// Why wake-ups are unavailable (logged, never thrown to callers).
private struct WakeUpError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

#if canImport(Glibc)
/// A Unix socket address (`sockaddr_un`).
private struct SocketAddress: Sendable {
    /// The bytes `sun_path` holds, the terminating NUL included.
    static let capacity = MemoryLayout.size(ofValue: sockaddr_un().sun_path)

    private var storage = sockaddr_un()

    /// The address of the socket file at `path`; `nil` when the path does not fit.
    init?(path: String) {
        let bytes = Array(path.utf8)
        guard bytes.count < Self.capacity else { return nil }
        storage.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &storage.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
    }

    /// Calls `body` with the address as a `sockaddr` and its length.
    func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        withUnsafePointer(to: storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}
#else
private enum SocketAddress {
    static let capacity = 0
}
#endif
