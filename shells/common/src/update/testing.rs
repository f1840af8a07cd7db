//! Release archives for tests (this crate's and the end-to-end suite's, feature
//! `test-support`): tar members (a hostile `..` name written as is), gzip, xz, SHA-256.

use std::io::{Cursor, Write};

use sha2::{Digest, Sha256};

/// A tar of regular files, mode 0755. A path holding `..` is written into the header as is
/// (the builder would refuse it; a hostile archive has it anyway).
pub fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        if path.contains("..") || path.starts_with('/') {
            let gnu = h.as_gnu_mut().expect("a GNU header");
            gnu.name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).expect("append to a Vec");
        } else {
            b.append_data(&mut h, path, *data).expect("append to a Vec");
        }
    }
    b.into_inner().expect("finish a Vec")
}

/// `bytes` gzipped.
pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("write to a Vec");
    e.finish().expect("finish a Vec")
}

/// `bytes` as an xz stream.
pub fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    lzma_rs::xz_compress(&mut Cursor::new(bytes), &mut out).expect("compress into a Vec");
    out
}

/// The lowercase hex SHA-256 of `bytes` (what a `.sha256` file states).
pub fn sha256_hex(bytes: &[u8]) -> String {
    super::hex(&Sha256::digest(bytes))
}
