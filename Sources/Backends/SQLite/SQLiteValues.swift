import Foundation
import GRDB

// Byte arrays in and out of SQLite.
//
// GRDB binds an empty `Data` with a NULL pointer, which SQLite stores as NULL, so an empty payload
// would read back as "no payload". Empty arrays are therefore bound as the empty string and every
// statement writes blobs through `CAST(? AS BLOB)`, which turns '' into X'' and leaves blobs and NULL
// as they are.

extension DatabaseValue {
    /// A blob argument for a `CAST(? AS BLOB)` placeholder; `nil` gives NULL.
    static func blob(_ bytes: [UInt8]?) -> DatabaseValue {
        guard let bytes else { return .null }
        return bytes.isEmpty ? "".databaseValue : Data(bytes).databaseValue
    }
}

extension Row {
    /// The blob at `index` as bytes; `nil` for NULL.
    func bytes(atIndex index: Int) throws -> [UInt8]? {
        try withUnsafeData(atIndex: index) { $0.map { [UInt8]($0) } }
    }
}
