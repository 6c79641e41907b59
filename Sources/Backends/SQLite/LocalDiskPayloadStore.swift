import Dispatch
import Foundation
import GridKernel

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A payload store in a local directory: one file per key.
///
/// Any key string is safe: a key is percent-encoded into a file name (letters, digits, `-` and `_`
/// stay as they are, every other byte becomes `%XX`, so `a/../b` is the single file `k-a%2F%2E%2E%2Fb`).
/// An encoded name longer than 200 bytes is cut into 200-byte directory levels (`d-…/d-…/f-…`), so
/// long keys never hit the file-name limit and never collide. A value is written to a temporary file
/// in `<directory>/.tmp` and renamed into place, so a reader sees the old or the new value, never a
/// part of one, even across processes sharing the directory. Values are not `fsync`ed: a crash of the
/// process is safe, a crash of the machine may lose the latest writes (as with the SQLite backend's
/// `synchronous = NORMAL`).
///
/// The blocking file calls run on a dispatch queue, never on the cooperative pool.
public struct LocalDiskPayloadStore: PayloadStore {
    /// The directory holding the payloads; created on first write.
    public let directory: String
    /// The largest value accepted, in bytes; `nil` for no limit.
    public let maxPayloadBytes: Int?

    private static let backend = "disk"
    private static let io = DispatchQueue(label: "htc-grid.local-disk-payloads", qos: .userInitiated, attributes: .concurrent)

    /// Creates a store in `directory` (created on the first write, with its parents).
    ///
    /// - Parameter maxPayloadBytes: the largest value accepted (64 MiB unless given).
    public init(directory: String, maxPayloadBytes: Int? = 64 << 20) {
        self.directory = directory.count > 1 && directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        self.maxPayloadBytes = maxPayloadBytes
    }

    /// Writes each value to a temporary file and renames it over the key's file.
    ///
    /// - Throws: ``GridError/Code/payloadTooLarge`` when a value exceeds ``maxPayloadBytes`` (nothing
    ///   is written); ``GridError/Code/invalidArgument`` for a key too long for a path (over about
    ///   1,300 bytes); ``GridError/Code/unavailable`` when the directory cannot be written.
    public func put(_ items: [PayloadItem]) async throws {
        guard !items.isEmpty else { return }
        try checkSizes(items, backend: Self.backend, setting: "LocalDiskPayloadStore maxPayloadBytes")
        let directory = self.directory
        try await Self.run {
            let temporary = directory + "/.tmp"
            try Self.makeDirectories(temporary)
            for item in items {
                let target = try Self.path(for: item.key, in: directory)
                let scratch = "\(temporary)/\(UUID().uuidString).tmp"
                try Self.writeFile(scratch, item.value)
                do {
                    try Self.renameIntoPlace(scratch, target, directory: directory)
                } catch {
                    unlink(scratch)
                    throw error
                }
            }
        }
    }

    /// Reads the files of the keys; missing keys are absent from the result.
    ///
    /// - Throws: ``GridError/Code/unavailable`` when a file exists but cannot be read.
    public func get(_ keys: [String]) async throws -> [String: [UInt8]] {
        guard !keys.isEmpty else { return [:] }
        let directory = self.directory
        return try await Self.run {
            var values: [String: [UInt8]] = [:]
            for key in keys {
                guard let path = try? Self.path(for: key, in: directory) else { continue }
                if let value = try Self.readFile(path) { values[key] = value }
            }
            return values
        }
    }

    /// Deletes the files of the keys (and the directory levels of long keys that become empty);
    /// missing keys are ignored.
    ///
    /// - Throws: ``GridError/Code/unavailable`` when a file cannot be deleted.
    public func delete(_ keys: [String]) async throws {
        guard !keys.isEmpty else { return }
        let directory = self.directory
        try await Self.run {
            for key in keys {
                guard let path = try? Self.path(for: key, in: directory) else { continue }
                guard unlink(path) == 0 || errno == ENOENT else {
                    throw Self.error(errno, "cannot delete payload file '\(path)'")
                }
                // Remove emptied levels of a long key; rmdir fails harmlessly on a non-empty one.
                var parent = Substring(path)
                while let slash = parent.lastIndex(of: "/"), parent[..<slash] != Substring(directory) {
                    parent = parent[..<slash]
                    guard rmdir(String(parent)) == 0 else { break }
                }
            }
        }
    }

    // MARK: - Key to path

    private static let maxNameBytes = 200

    /// The file of `key`: `k-<encoded>` for short keys, `d-<part>/…/f-<last part>` for long ones.
    static func path(for key: String, in directory: String) throws -> String {
        let encoded = encode(key)
        guard encoded.utf8.count > maxNameBytes else { return "\(directory)/k-\(encoded)" }
        var parts: [Substring] = []
        var rest = Substring(encoded)
        while !rest.isEmpty {
            let end = rest.utf8.index(rest.startIndex, offsetBy: min(maxNameBytes, rest.utf8.count))
            parts.append(rest[..<end])
            rest = rest[end...]
        }
        let path = directory + "/" + parts.dropLast().map { "d-\($0)/" }.joined() + "f-" + parts[parts.count - 1]
        guard path.utf8.count < Int(PATH_MAX) - 64 else {
            throw GridError.invalidArgument(
                "payload key of \(key.utf8.count) bytes is too long for a file path; use keys under 1,000 bytes", backend: backend)
        }
        return path
    }

    /// Percent-encodes every byte except ASCII letters, digits, `-` and `_` (so `.`, `/` and `%` are encoded).
    static func encode(_ key: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(key.utf8.count)
        for byte in key.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
                bytes.append(byte)
            default:
                bytes.append(UInt8(ascii: "%"))
                bytes.append(hex[Int(byte >> 4)])
                bytes.append(hex[Int(byte & 0x0F)])
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: - File I/O (blocking; only on `io`)

    private static func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            io.async { continuation.resume(with: Result { try work() }) }
        }
    }

    private static func writeFile(_ path: String, _ value: [UInt8]) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw error(errno, "cannot create payload file '\(path)'") }
        defer { close(descriptor) }
        try value.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    let code = errno
                    unlink(path)
                    throw error(code, "cannot write payload file '\(path)'")
                }
                offset += written
            }
        }
    }

    /// Renames `scratch` to `target`, creating the directory levels of a long key when missing (a
    /// concurrent delete may remove an emptied level between the two steps, hence the retries).
    private static func renameIntoPlace(_ scratch: String, _ target: String, directory: String) throws {
        var attempts = 0
        while rename(scratch, target) != 0 {
            let code = errno
            attempts += 1
            guard code == ENOENT, attempts <= 3, let slash = target.lastIndex(of: "/") else {
                throw error(code, "cannot move payload file into place at '\(target)'")
            }
            try makeDirectories(String(target[..<slash]))
        }
    }

    private static func readFile(_ path: String) throws -> [UInt8]? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            if errno == ENOENT || errno == ENOTDIR { return nil }
            throw error(errno, "cannot open payload file '\(path)'")
        }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw error(errno, "cannot read payload file '\(path)'") }
        // The file is replaced by rename, never changed in place, so its size is final.
        let size = Int(status.st_size)
        return try [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            var offset = 0
            while offset < size {
                let count = read(descriptor, buffer.baseAddress! + offset, size - offset)
                if count < 0 {
                    if errno == EINTR { continue }
                    throw error(errno, "cannot read payload file '\(path)'")
                }
                if count == 0 { break }
                offset += count
            }
            initialized = offset
        }
    }

    private static func makeDirectories(_ path: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw GridError.unavailable(
                "cannot create payload directory '\(path)'; check that the parent exists and is writable",
                backend: backend, underlying: error)
        }
    }

    private static func error(_ code: Int32, _ message: String) -> GridError {
        let reason = String(cString: strerror(code))
        switch code {
        case ENAMETOOLONG:
            return GridError.invalidArgument("\(message): \(reason); use a shorter key", backend: backend)
        case ENOSPC, EDQUOT:
            return GridError.unavailable("\(message): \(reason); free disk space or raise the quota", backend: backend)
        default:
            return GridError.unavailable(
                "\(message): \(reason); check that the payload directory exists and that this process may write it",
                backend: backend)
        }
    }
}
