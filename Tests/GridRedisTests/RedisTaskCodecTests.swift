import Foundation
import GridKernel
import Testing

@testable import GridRedis

// The packed record must round-trip every field, and read what Redis' cmsgpack writes back.

@Test func packedRecordsRoundTripEveryField() throws {
    let session = SessionID.random()
    let base = Date(timeIntervalSince1970: 1_800_000_000.123456)
    let full = TaskRecord(
        id: TaskID(session: session, index: 7), state: .processing, owner: AgentID("agent-é"), leaseExpiry: base + 30,
        retries: 3, maxRetries: 200, priority: -4, timeout: .milliseconds(1_500), submittedAt: base,
        startedAt: base + 1, completedAt: nil, lastError: String(repeating: "x", count: 70_000),
        output: [UInt8](repeating: 0xc2, count: 300)
    )
    let bare = TaskRecord(id: TaskID(session: session, index: 0), submittedAt: base)
    let empty = TaskRecord(id: TaskID(session: session, index: 1), state: .finished, submittedAt: base, completedAt: base, output: [])
    let numbered = TaskRecord(
        id: TaskID(session: session, index: 2), state: .cancelled, submittedAt: base, completedAt: base, completionSequence: 1_000_000)
    for record in [full, bare, empty, numbered] {
        #expect(try RedisTaskCodec.decode(record.id, RedisTaskCodec.encode(record)) == record)
    }
}

@Test func packedRecordsReadWhatLuaWrites() throws {
    // cmsgpack writes small strings as fixstr, integers as fixint or int64, and `false` for absent values;
    // a terminal record read back has no owner or lease, whatever the positions hold.
    var bytes: [UInt8] = [0x9d]
    func text(_ value: String) { bytes.append(0xa0 | UInt8(value.utf8.count)); bytes += Array(value.utf8) }
    text("finished"); text("a1"); text("99"); bytes.append(0x02); bytes += [0xd3, 0, 0, 0, 0, 0, 0, 0, 5]; bytes.append(0xff)
    bytes.append(0xc2); text("1000"); text("1001"); text("1002"); bytes.append(0xc2); bytes += [0xd9, 2, 0x00, 0xff]; text("tok")
    let id = TaskID(session: SessionID.random(), index: 3)
    let record = try RedisTaskCodec.decode(id, bytes)
    #expect(record.state == .finished)
    #expect(record.owner == nil && record.leaseExpiry == nil)
    #expect(record.retries == 2 && record.maxRetries == 5 && record.priority == -1)
    #expect(record.timeout == nil && record.lastError == nil)
    #expect(record.submittedAt == Date(timeIntervalSince1970: 1000))
    #expect(record.completedAt == Date(timeIntervalSince1970: 1002))
    #expect(record.output == [0x00, 0xff])
    #expect(throws: GridError.self) { try RedisTaskCodec.decode(id, Array(bytes.prefix(20))) }
}
