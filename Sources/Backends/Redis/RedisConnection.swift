import GridKernel
import NIOCore
import NIOPosix
import NIOSSL

/// One connection to Redis: a NIO channel with a ``RedisReplyHandler`` that pipelines commands.
///
/// Sendable: the channel is thread-safe and every write goes through it; nothing blocks a thread.
final class RedisConnection: Sendable {
    private let channel: any Channel

    private init(channel: any Channel) {
        self.channel = channel
    }

    /// Whether the channel is still open.
    var isActive: Bool { channel.isActive }

    /// The local port of the connection (Redis lists it in `CLIENT LIST` as the port of `addr`).
    var localPort: Int? { channel.localAddress?.port }

    /// Connects, speaks TLS if configured, authenticates and selects the database. With `onMessage`,
    /// the connection is a subscriber's: published messages go to it (see ``RedisReplyHandler``), and
    /// `onClose` is called when the connection closes.
    ///
    /// - Throws: ``GridError/Code/unavailable`` if Redis cannot be reached; ``GridError/Code/unauthorized``
    ///   if it refuses the credentials; ``GridError/Code/invalidArgument`` for a bad CA file.
    static func connect(
        _ configuration: RedisConfiguration, group: any EventLoopGroup, onMessage: (@Sendable (String, [UInt8]) -> Void)? = nil,
        onClose: (@Sendable () -> Void)? = nil
    ) async throws -> RedisConnection {
        let sslContext: NIOSSLContext?
        if configuration.tls {
            do {
                var tls = TLSConfiguration.makeClientConfiguration()
                if let caFile = configuration.caFile { tls.trustRoots = .file(caFile) }
                if !configuration.verifyCertificate { tls.certificateVerification = .none }
                sslContext = try NIOSSLContext(configuration: tls)
            } catch {
                throw GridError(.invalidArgument, "cannot set up TLS for \(configuration.endpoint)", backend: "redis", underlying: error)
            }
        } else {
            sslContext = nil
        }
        let host = configuration.host
        let bootstrap = ClientBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        let serverName = host.first?.isNumber == true ? nil : host
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: serverName))
                    }
                    try channel.pipeline.syncOperations.addHandler(RedisReplyHandler(onMessage: onMessage, onClose: onClose))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            throw GridError.unavailable("cannot connect to \(configuration.endpoint)", backend: "redis", underlying: error)
        }
        let connection = RedisConnection(channel: channel)
        var handshake: [RedisCommand] = []
        if let password = configuration.password {
            handshake.append(configuration.user.map { RedisCommand("AUTH", $0, password) } ?? RedisCommand("AUTH", password))
        }
        if configuration.database != 0 { handshake.append(RedisCommand("SELECT", String(configuration.database))) }
        do {
            for reply in try await connection.send(handshake) {
                if case .error(let message) = reply {
                    let code: GridError.Code = message.contains("WRONGPASS") || message.contains("NOAUTH") ? .unauthorized : .unavailable
                    throw GridError(code, "\(configuration.endpoint) refused the connection: \(message)", backend: "redis")
                }
            }
        } catch {
            connection.close()
            throw error
        }
        return connection
    }

    /// Sends commands in one write and returns their replies in order (error replies included).
    ///
    /// - Throws: ``GridError/Code/unavailable`` if the connection breaks first.
    func send(_ commands: [RedisCommand]) async throws -> [RedisValue] {
        try await write(commands).get()
    }

    /// Writes commands at once and returns the future of their replies. Writes made one after the
    /// other outside the channel's event loop (from Swift tasks) reach Redis in that order: each is
    /// queued on the loop.
    func write(_ commands: [RedisCommand]) -> EventLoopFuture<[RedisValue]> {
        guard !commands.isEmpty else { return channel.eventLoop.makeSucceededFuture([]) }
        var buffer = channel.allocator.buffer(capacity: 256)
        for command in commands { RedisProtocol.encode(command, into: &buffer) }
        let promise = channel.eventLoop.makePromise(of: [RedisValue].self)
        channel.writeAndFlush(RedisRequest(buffer: buffer, count: commands.count, promise: promise)).whenFailure { error in
            promise.fail(GridError.unavailable("cannot write to Redis", backend: "redis", underlying: error))
        }
        return promise.futureResult
    }

    /// Closes the channel; pending commands fail with ``GridError/Code/unavailable``.
    func close() {
        channel.close(promise: nil)
    }
}
