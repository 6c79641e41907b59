import Foundation
import GridKernel
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs a command once per task: the input on its stdin, its stdout as the output.
///
/// The command line is run by `/bin/sh -c`, so pipes and quoting work as in a shell. A non-zero exit
/// fails the task, keeping the tail of stderr as the error. The child runs in its own process group;
/// when the task is cancelled (cancel, lost lease, time limit, agent stop) the whole group gets
/// SIGTERM and, after ``killGrace``, SIGKILL.
///
/// Blocking calls (`waitpid`, pipe reads and writes) run on threads of their own, never on the
/// cooperative pool and not on Dispatch's pool either: Dispatch caps its threads, and with many children
/// the readers could take every thread while the writers that would let the children finish wait.
public struct ExecHandler: TaskHandler {
    /// The shell command line.
    public let command: String
    /// How long a cancelled child gets between SIGTERM and SIGKILL. Default 2 s.
    public let killGrace: Duration
    /// How much of stderr to keep as the error text of a failure. Default 4 KiB.
    public let stderrTail: Int

    /// Creates a handler for a command line.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for an empty command.
    public init(command: String, killGrace: Duration = .seconds(2), stderrTail: Int = 4096) throws {
        guard !command.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw GridError.invalidArgument("--exec needs a command, e.g. --exec \"python3 worker.py\"")
        }
        // A child that exits without reading its stdin must not kill the agent with SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        self.command = command
        self.killGrace = killGrace
        self.stderrTail = stderrTail
    }

    public func run(input: [UInt8], context: TaskContext) async throws -> [UInt8] {
        let child = try ChildProcess.spawn(["/bin/sh", "-c", command], environment: [
            "HTC_TASK_ID": context.id.rawValue,
            "HTC_SESSION_ID": context.id.session.rawValue,
            "HTC_ATTEMPT": String(context.attempt),
        ])
        async let written: Void = child.writeStdin(input)
        async let output = child.readAll(child.stdout)
        async let errors = child.readAll(child.stderr)
        let status = await withTaskCancellationHandler {
            await child.wait()
        } onCancel: {
            child.terminate(grace: killGrace)
        }
        await written
        let stdout = await output
        let stderr = await errors
        try Task.checkCancellation()
        guard status == 0 else {
            let tail = String(decoding: stderr.suffix(stderrTail), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            let reason = status > 0 ? "exited with status \(status)" : "was killed by signal \(-status)"
            throw ExecFailure(message: "command \(reason)" + (tail.isEmpty ? "" : ": \(tail)"))
        }
        return stdout
    }
}

/// The failure of a command run by ``ExecHandler``: its exit status and the tail of its stderr.
public struct ExecFailure: Error, CustomStringConvertible, Sendable {
    /// The error text kept with the task.
    public let message: String
    public var description: String { message }
}

/// A child process with pipes to its stdin, stdout and stderr, in its own process group.
final class ChildProcess: Sendable {
    let pid: pid_t
    let stdin: Int32
    let stdout: Int32
    let stderr: Int32
    private let reaped = Atomic<Bool>(false)
    private static let timers = DispatchQueue(label: "htc.exec.kill-timer")

    /// Runs a blocking call on a thread of its own.
    private static func blocking(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.stackSize = 256 * 1024
        thread.start()
    }

    private init(pid: pid_t, stdin: Int32, stdout: Int32, stderr: Int32) {
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
    }

    /// Serialises pipe creation and spawning, so that no child is spawned between the creation of
    /// another child's pipes and the moment they are marked close-on-exec.
    private static let spawnLock = Mutex(())

    static func spawn(_ arguments: [String], environment extra: [String: String]) throws -> ChildProcess {
        try spawnLock.withLock { _ in try spawnLocked(arguments, environment: extra) }
    }

    /// Creates a pipe whose two ends are close-on-exec (Glibc's `pipe2` is not visible to Swift).
    private static func makePipe(_ fds: inout [Int32]) -> Bool {
        guard pipe(&fds) == 0 else { return false }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return true
    }

    private static func spawnLocked(_ arguments: [String], environment extra: [String: String]) throws -> ChildProcess {
        var input: [Int32] = [0, 0]
        var output: [Int32] = [0, 0]
        var errors: [Int32] = [0, 0]
        // Close-on-exec, so that a child spawned concurrently for another task does not inherit (and
        // hold open) this child's pipes; dup2 onto 0, 1 and 2 clears the flag for this child only.
        guard makePipe(&input), makePipe(&output), makePipe(&errors) else {
            throw GridError(.unavailable, "cannot create pipes for the task's process: \(String(cString: strerror(errno)))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, input[0], 0)
        posix_spawn_file_actions_adddup2(&actions, output[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errors[1], 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)

        var environment = ProcessInfo.processInfo.environment
        for (key, value) in extra { environment[key] = value }
        let envStrings = environment.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let result = withCStrings(arguments) { argv in
            withCStrings(envStrings) { envp in
                posix_spawn(&pid, arguments[0], &actions, &attributes, argv, envp)
            }
        }
        close(input[0])
        close(output[1])
        close(errors[1])
        guard result == 0 else {
            close(input[1])
            close(output[0])
            close(errors[0])
            throw GridError(.unavailable, "cannot start '\(arguments.joined(separator: " "))': \(String(cString: strerror(result)))")
        }
        return ChildProcess(pid: pid, stdin: input[1], stdout: output[0], stderr: errors[0])
    }

    /// Writes all of `bytes` to stdin and closes it; a child that exits without reading is fine.
    func writeStdin(_ bytes: [UInt8]) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Self.blocking {
                bytes.withUnsafeBytes { buffer in
                    var offset = 0
                    while offset < buffer.count {
                        let written = write(self.stdin, buffer.baseAddress! + offset, buffer.count - offset)
                        if written < 0 {
                            if errno == EINTR { continue }
                            break
                        }
                        offset += written
                    }
                }
                close(self.stdin)
                continuation.resume()
            }
        }
    }

    /// Reads a pipe to its end and closes it.
    func readAll(_ fd: Int32) async -> [UInt8] {
        await withCheckedContinuation { (continuation: CheckedContinuation<[UInt8], Never>) in
            Self.blocking {
                var collected: [UInt8] = []
                var chunk = [UInt8](repeating: 0, count: 64 * 1024)
                while true {
                    let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                    if count > 0 {
                        collected.append(contentsOf: chunk[0..<count])
                    } else if count < 0 && errno == EINTR {
                        continue
                    } else {
                        break
                    }
                }
                close(fd)
                continuation.resume(returning: collected)
            }
        }
    }

    /// Waits for the child to exit: its exit status, or minus the signal that killed it.
    func wait() async -> Int32 {
        await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
            Self.blocking {
                var status: Int32 = 0
                while waitpid(self.pid, &status, 0) < 0 && errno == EINTR {}
                self.reaped.store(true, ordering: .releasing)
                let signal = status & 0x7f
                continuation.resume(returning: signal == 0 ? (status >> 8) & 0xff : -signal)
            }
        }
    }

    /// Sends SIGTERM to the child's process group, and SIGKILL after `grace`.
    func terminate(grace: Duration) {
        let group = -pid
        kill(group, SIGTERM)
        Self.timers.asyncAfter(deadline: .now() + grace.timeInterval) {
            // Once the child is reaped its group id may be reused; leave it alone then.
            if !self.reaped.load(ordering: .acquiring) { kill(group, SIGKILL) }
        }
    }
}

private func withCStrings<Result>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> Result) -> Result {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for pointer in pointers { free(pointer) } }
    return body(pointers)
}
