import Foundation
import GridKernel
import Testing

@testable import GridRedis

// Error replies become GridErrors by their error code, so that callers retry only what can succeed.

@Test(arguments: [
    ("NOAUTH Authentication required.", GridError.Code.unauthorized),
    ("WRONGPASS invalid username-password pair or user is disabled.", .unauthorized),
    ("NOPERM this user has no permissions to run the 'evalsha' command", .unauthorized),
    ("LOADING Redis is loading the dataset in memory", .unavailable),
    ("BUSY Redis is busy running a script.", .unavailable),
    ("READONLY You can't write against a read only replica.", .unavailable),
    ("OOM command not allowed when used memory > 'maxmemory'.", .unavailable),
    ("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.", .unavailable),
    ("ERR max number of clients reached", .unavailable),
    ("WRONGTYPE Operation against a key holding the wrong kind of value", .conflict),
    ("ERR Error running script (call to f_1234): @user_script:3: bad argument", .internalError),
])
func errorRepliesMapToGridErrorCodes(_ reply: String, _ code: GridError.Code) throws {
    let error = RedisValue.gridError(reply, context: "test")
    #expect(error.code == code, "\(reply)")
    #expect(error.message.contains(reply))
    #expect(throws: GridError.self) { try RedisValue.error(reply).checked() }
}

@Test(.enabled(if: ProcessInfo.processInfo.environment["HTC_TEST_REDIS"] != nil, "HTC_TEST_REDIS is unset"))
func foreignKeyUnderThePrefixIsAConflictThatNamesThePrefixOption() async throws {
    let url = try #require(ProcessInfo.processInfo.environment["HTC_TEST_REDIS"])
    var configuration = try RedisConfiguration(BackendURL(url))
    configuration.prefix = "foreign-" + UUID().uuidString.prefix(8).lowercased()
    let client = RedisClient(configuration)
    let state = RedisStateStore(client: client)
    let session = SessionID.random()
    // Another program wrote a plain string where the grid keeps the session's hash.
    _ = try await client.send([RedisCommand("SET", RedisKeys.session(prefix: configuration.prefix, session.rawValue) + ":info", "x")])[0].checked()
    let error = await #expect(throws: GridError.self) { try await state.beginSubmission(.begin(session: session, key: .random(), count: 1, at: Date())).range }
    #expect(error?.code == .conflict)
    #expect(error?.message.contains("prefix") == true, "\(error?.message ?? "")")
    await client.close()
}
