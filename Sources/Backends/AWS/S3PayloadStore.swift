import Crypto
import Foundation
import GridKernel

/// The payload store on Amazon S3: one object per key under a prefix.
///
/// `PutObject` (multipart above a threshold), `GetObject` and `DeleteObjects` (1,000 keys a call),
/// with path-style or virtual-host addressing and optional server-side encryption (SSE-S3, or
/// SSE-KMS with a key id), sent on every write including multipart uploads.
public struct S3PayloadStore: PayloadStore {
    private let client: AWSClient
    private let configuration: S3Configuration

    /// Creates a store on an S3 client.
    public init(client: AWSClient, configuration: S3Configuration) {
        self.client = client
        self.configuration = configuration
    }

    public var maxPayloadBytes: Int? { configuration.maxPayloadBytes }

    public func put(_ items: [PayloadItem]) async throws {
        try checkSizes(items, backend: "s3", setting: "max_payload_bytes")
        _ = try await items.concurrentMap(width: configuration.concurrency) { item in
            if item.value.count > configuration.multipartThreshold {
                try await putMultipart(item)
            } else {
                _ = try await send(
                    "PutObject", method: "PUT", key: item.key, headers: encryptionHeaders + [("content-type", "application/octet-stream")], body: item.value)
            }
        }
    }

    public func get(_ keys: [String]) async throws -> [String: [UInt8]] {
        let found = try await Set(keys).concurrentMap(width: configuration.concurrency) { key -> (String, [UInt8])? in
            let response = try await send("GetObject", method: "GET", key: key, accept: { (200..<300).contains($0) || $0 == 404 })
            if response.status == 404 {
                let code = XMLText.value("Code", in: response.text)
                guard code == nil || code == "NoSuchKey" else {
                    throw AWSServiceError(
                        status: 404, body: response.body, headers: response.headers, service: "s3", action: "GetObject",
                        resource: resource(key)
                    ).gridError
                }
                return nil
            }
            return (key, response.body)
        }
        return Dictionary(found.compactMap { $0 }, uniquingKeysWith: { $1 })
    }

    public func delete(_ keys: [String]) async throws {
        let unique = Array(Set(keys))
        let chunks = stride(from: 0, to: unique.count, by: 1_000).map { Array(unique[$0..<Swift.min($0 + 1_000, unique.count)]) }
        _ = try await chunks.concurrentMap(width: 4) { chunk in
            let xml = "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet>"
                + chunk.map { "<Object><Key>\(XMLText.escape(objectKey($0)))</Key></Object>" }.joined() + "</Delete>"
            let body = Array(xml.utf8)
            let response = try await send(
                "DeleteObjects", method: "POST", key: nil, query: [("delete", "")],
                headers: [("content-type", "application/xml"), ("content-md5", Data(Insecure.MD5.hash(data: body)).base64EncodedString())],
                body: body)
            let errors = XMLText.blocks("Error", in: response.text).filter { XMLText.value("Code", in: $0) != "NoSuchKey" }
            if let first = errors.first {
                throw GridError.unavailable(
                    "s3:DeleteObjects on \(configuration.bucket) failed for \(errors.count) key(s), e.g. \(XMLText.value("Key", in: first) ?? "?"): \(XMLText.value("Code", in: first) ?? "?") \(XMLText.value("Message", in: first) ?? "")",
                    backend: "s3")
            }
        }
    }

    /// Creates the bucket if it does not exist (idempotent).
    ///
    /// - Throws: ``GridKernel/GridError``.
    public func createBucket() async throws {
        var body: [UInt8] = []
        if configuration.region != "us-east-1" {
            body = Array(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>\(configuration.region)</LocationConstraint></CreateBucketConfiguration>"
                    .utf8)
        }
        let response = try await send("CreateBucket", method: "PUT", key: nil, body: body, accept: { (200..<300).contains($0) || $0 == 409 })
        if response.status == 409, XMLText.value("Code", in: response.text) != "BucketAlreadyOwnedByYou" {
            throw AWSServiceError(
                status: 409, body: response.body, headers: response.headers, service: "s3", action: "CreateBucket", resource: configuration.bucket
            ).gridError
        }
    }

    // MARK: Multipart

    private func putMultipart(_ item: PayloadItem) async throws {
        let created = try await send(
            "CreateMultipartUpload", method: "POST", key: item.key, query: [("uploads", "")],
            headers: encryptionHeaders + [("content-type", "application/octet-stream")])
        guard let uploadID = XMLText.value("UploadId", in: created.text) else {
            throw GridError(.internalError, "s3:CreateMultipartUpload of \(resource(item.key)) answered without UploadId", backend: "s3")
        }
        do {
            let size = configuration.partSize
            let parts = stride(from: 0, to: item.value.count, by: size).enumerated().map { (number: $0.offset + 1, start: $0.element) }
            let etags = try await parts.concurrentMap(width: 4) { part -> (Int, String) in
                let body = Array(item.value[part.start..<Swift.min(part.start + size, item.value.count)])
                let response = try await send(
                    "UploadPart", method: "PUT", key: item.key, query: [("partNumber", String(part.number)), ("uploadId", uploadID)], body: body)
                guard let etag = response.header("etag") else {
                    throw GridError(.internalError, "s3:UploadPart \(part.number) of \(resource(item.key)) answered without ETag", backend: "s3")
                }
                return (part.number, etag)
            }
            let xml = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                + etags.map { "<Part><PartNumber>\($0.0)</PartNumber><ETag>\(XMLText.escape($0.1))</ETag></Part>" }.joined()
                + "</CompleteMultipartUpload>"
            let completed = try await send(
                "CompleteMultipartUpload", method: "POST", key: item.key, query: [("uploadId", uploadID)],
                headers: [("content-type", "application/xml")], body: Array(xml.utf8))
            // S3 may answer 200 and put the error in the body.
            if completed.text.contains("<Error>") {
                throw AWSServiceError(
                    status: 500, body: completed.body, headers: completed.headers, service: "s3", action: "CompleteMultipartUpload",
                    resource: resource(item.key)
                ).gridError
            }
        } catch {
            _ = try? await send("AbortMultipartUpload", method: "DELETE", key: item.key, query: [("uploadId", uploadID)], accept: { _ in true })
            throw error
        }
    }

    // MARK: Requests

    private var encryptionHeaders: [(String, String)] {
        switch configuration.encryption {
        case .none: []
        case .s3: [("x-amz-server-side-encryption", "AES256")]
        case .kms(let keyID):
            [("x-amz-server-side-encryption", "aws:kms")] + (keyID.map { [("x-amz-server-side-encryption-aws-kms-key-id", $0)] } ?? [])
        }
    }

    private func objectKey(_ key: String) -> String { configuration.prefix + key }

    private func resource(_ key: String) -> String { "s3://\(configuration.bucket)/\(objectKey(key))" }

    /// One request on the bucket (`key` nil) or on an object.
    private func send(
        _ action: String, method: String, key: String?, query: [(String, String)] = [], headers: [(String, String)] = [], body: [UInt8] = [],
        accept: @escaping (Int) -> Bool = { (200..<300).contains($0) }
    ) async throws -> AWSHTTP.Response {
        let objectPath = key.map { "/" + SigV4Signer.encode(objectKey($0), keepSlash: true) } ?? "/"
        let path: String
        let host: String?
        if configuration.pathStyle {
            path = "/\(configuration.bucket)" + (key == nil ? "" : objectPath)
            host = nil
        } else {
            path = objectPath
            host = "\(configuration.bucket).\(client.endpoint.host)"
        }
        return try await client.send(
            AWSClient.Call(
                method: method, path: path, query: query, headers: headers, body: body, action: action,
                resource: key.map(resource) ?? "s3://\(configuration.bucket)", repeatability: .safe, host: host),
            accept: accept)
    }
}

/// Where and how the S3 payload store works, from `s3://BUCKET/PREFIX?region=…&endpoint=…`.
public struct S3Configuration: Sendable, Hashable {
    /// Server-side encryption of the objects written.
    public enum Encryption: Sendable, Hashable {
        /// The bucket's default.
        case none
        /// SSE-S3 (`AES256`).
        case s3
        /// SSE-KMS with a key id or ARN (`nil`: the account's `aws/s3` key).
        case kms(String?)
    }

    /// The bucket.
    public var bucket: String
    /// Prepended to every key (`PREFIX/` from the URL's path; empty for none).
    public var prefix: String
    /// The AWS region.
    public var region: String
    /// `https://host/bucket/key` instead of `https://bucket.host/key`.
    public var pathStyle: Bool
    /// Server-side encryption.
    public var encryption: Encryption
    /// Values larger than this go up as multipart uploads.
    public var multipartThreshold: Int
    /// The size of each part but the last (S3's minimum is 5 MiB).
    public var partSize: Int
    /// The largest value accepted.
    public var maxPayloadBytes: Int
    /// Object requests in flight within one batch.
    public var concurrency: Int

    /// Creates a configuration.
    public init(
        bucket: String, prefix: String = "", region: String, pathStyle: Bool = false, encryption: Encryption = .none,
        multipartThreshold: Int = 16 << 20, partSize: Int = 8 << 20, maxPayloadBytes: Int = 64 << 20, concurrency: Int = 8
    ) {
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self.pathStyle = pathStyle
        self.encryption = encryption
        self.multipartThreshold = multipartThreshold
        self.partSize = partSize
        self.maxPayloadBytes = maxPayloadBytes
        self.concurrency = concurrency
    }
}
