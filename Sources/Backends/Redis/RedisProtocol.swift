import CHiredis
import GridKernel
import NIOCore

/// The RESP codec, borrowed from hiredis: `redisFormatCommandArgv` encodes commands and a
/// `redisReader` parses replies. No socket of hiredis is ever used; SwiftNIO owns the connection.
enum RedisProtocol {
    /// Appends the RESP encoding of `command` to `buffer`.
    static func encode(_ command: RedisCommand, into buffer: inout ByteBuffer) {
        let arguments = command.arguments
        var lengths = [Int](repeating: 0, count: arguments.count)
        var offsets = [Int](repeating: 0, count: arguments.count)
        var total = 0
        for (i, argument) in arguments.enumerated() {
            offsets[i] = total
            lengths[i] = argument.count
            total += argument.count
        }
        // One contiguous copy of the arguments, so every argv pointer stays valid during the call.
        var blob = [UInt8]()
        blob.reserveCapacity(total + 1)
        for argument in arguments { blob.append(contentsOf: argument) }
        blob.append(0)
        blob.withUnsafeBufferPointer { raw in
            raw.baseAddress!.withMemoryRebound(to: CChar.self, capacity: raw.count) { base in
                var argv: [UnsafePointer<CChar>?] = offsets.map { UnsafePointer(base + $0) }
                var target: UnsafeMutablePointer<CChar>?
                let length = redisFormatCommandArgv(&target, Int32(arguments.count), &argv, lengths)
                guard length > 0, let target else { return }
                defer { redisFreeCommand(target) }
                _ = target.withMemoryRebound(to: UInt8.self, capacity: Int(length)) { bytes in
                    buffer.writeBytes(UnsafeBufferPointer(start: bytes, count: Int(length)))
                }
            }
        }
    }

    /// Copies a hiredis reply tree into a ``RedisValue``.
    static func value(of reply: UnsafePointer<redisReply>) -> RedisValue {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STRING:
            return .bytes(bytes(r.str, r.len))
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: bytes(r.str, r.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: bytes(r.str, r.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(Int(r.integer))
        case REDIS_REPLY_ARRAY:
            var items: [RedisValue] = []
            items.reserveCapacity(r.elements)
            for i in 0..<r.elements {
                if let element = r.element[i] { items.append(value(of: element)) } else { items.append(.null) }
            }
            return .array(items)
        default:
            return .null
        }
    }

    private static func bytes(_ pointer: UnsafeMutablePointer<CChar>?, _ count: Int) -> [UInt8] {
        guard let pointer, count > 0 else { return [] }
        return pointer.withMemoryRebound(to: UInt8.self, capacity: count) { Array(UnsafeBufferPointer(start: $0, count: count)) }
    }
}

/// A write to the connection: encoded commands and the promise of their replies, in order.
struct RedisRequest: Sendable {
    /// The RESP bytes of `count` commands.
    var buffer: ByteBuffer
    /// How many replies to collect.
    var count: Int
    /// Completed with the `count` replies, or failed when the connection breaks.
    var promise: EventLoopPromise<[RedisValue]>
}

/// Pipelines requests on one connection: writes them as they come and completes them in FIFO order
/// as replies arrive (Redis answers the commands of one connection in order).
///
/// On a subscriber connection (`onMessage` given), a reply `["message", channel, payload]` is a
/// published message, not the answer to a command: it goes to `onMessage`. Only such a connection may
/// take it so, since there the only commands sent are `AUTH`, `SELECT` and `(UN)SUBSCRIBE`, whose
/// answers never look like it; on others the same array can be the answer to e.g. `LRANGE`.
///
/// Isolation: lives on its channel's event loop, like every NIO handler; the hiredis reader it owns is
/// touched only there and freed in `deinit`.
final class RedisReplyHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = RedisRequest
    typealias OutboundOut = ByteBuffer

    private struct Pending {
        let count: Int
        let promise: EventLoopPromise<[RedisValue]>
        var replies: [RedisValue]
    }

    private let reader: UnsafeMutablePointer<redisReader>
    private var pending = CircularBuffer<Pending>()
    private var failure: (any Error)?
    private let onMessage: (@Sendable (String, [UInt8]) -> Void)?
    private let onClose: (@Sendable () -> Void)?

    /// A handler; `onMessage` (channel, payload) makes it a subscriber connection's, and `onClose` is
    /// called once the connection closed.
    init(onMessage: (@Sendable (String, [UInt8]) -> Void)? = nil, onClose: (@Sendable () -> Void)? = nil) {
        reader = redisReaderCreate()
        self.onMessage = onMessage
        self.onClose = onClose
    }

    deinit {
        redisReaderFree(reader)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        if let failure {
            request.promise.fail(failure)
            promise?.fail(failure)
            return
        }
        if request.count == 0 {
            request.promise.succeed([])
        } else {
            pending.append(Pending(count: request.count, promise: request.promise, replies: []))
        }
        context.write(wrapOutboundOut(request.buffer), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        let fed = buffer.withUnsafeReadableBytes { raw -> Int32 in
            guard let base = raw.baseAddress, raw.count > 0 else { return REDIS_OK }
            return redisReaderFeed(reader, base.assumingMemoryBound(to: CChar.self), raw.count)
        }
        guard fed == REDIS_OK else { return fail(context: context, "could not read Redis' reply") }
        while true {
            var raw: UnsafeMutableRawPointer?
            guard redisReaderGetReply(reader, &raw) == REDIS_OK else {
                return fail(context: context, "Redis sent a malformed reply")
            }
            guard let raw else { break }
            let value = RedisProtocol.value(of: raw.assumingMemoryBound(to: redisReply.self))
            freeReplyObject(raw)
            if let onMessage, case .array(let items) = value, items.count == 3, items[0].string == "message", let channel = items[1].string {
                onMessage(channel, items[2].bytes ?? [])
                continue
            }
            guard !pending.isEmpty else { return fail(context: context, "Redis sent a reply nobody asked for") }
            pending[pending.startIndex].replies.append(value)
            if pending[pending.startIndex].replies.count == pending[pending.startIndex].count {
                let done = pending.removeFirst()
                done.promise.succeed(done.replies)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(GridError.unavailable("the connection to Redis closed", backend: "redis"))
        onClose?()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(GridError.unavailable("the connection to Redis failed", backend: "redis", underlying: error))
        context.close(promise: nil)
    }

    private func fail(context: ChannelHandlerContext, _ message: String) {
        failAll(GridError(.internalError, message, backend: "redis"))
        context.close(promise: nil)
    }

    private func failAll(_ error: any Error) {
        if failure == nil { failure = error }
        while let next = pending.popFirst() { next.promise.fail(error) }
    }
}
