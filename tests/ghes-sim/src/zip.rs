//! Real, minimal zip archives: one stored (uncompressed) entry.
//!
//! Clients and the product check sizes and digests of the downloaded zip and
//! may unpack it, so the bytes must be a valid archive, not a placeholder.
//! Zip64 is not needed: payloads stay far below 4 GiB.

use bytes::Bytes;

/// Fixed DOS timestamp (2024-01-01 00:00:00) so a given (name, size, seed)
/// always yields byte-identical zips.
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = ((2024 - 1980) << 9) | (1 << 5) | 1;
const LOCAL_HEADER: usize = 30;
const CENTRAL_HEADER: usize = 46;
const END_RECORD: usize = 22;
/// Bit 11: the file name is UTF-8 (artifact names may be any Unicode).
const FLAG_UTF8: u16 = 0x0800;

/// Builds a zip holding `file_name` with `payload_len` bytes of printable,
/// pseudo-random text derived from `seed`.
///
/// Panics if the payload or name exceed the classic zip limits (4 GiB, 64 KiB):
/// that is a mistake in a test's setup, not something a request can cause.
pub(crate) fn build(file_name: &str, payload_len: usize, seed: u64) -> Bytes {
    let name = file_name.as_bytes();
    assert!(
        name.len() <= usize::from(u16::MAX),
        "zip entry name too long"
    );
    assert!(
        payload_len < (u32::MAX as usize) - 64 * 1024 - 2 * name.len(),
        "zip payload too large for a non-zip64 archive"
    );
    let data_start = LOCAL_HEADER + name.len();
    let cd_start = data_start + payload_len;
    let total = cd_start + CENTRAL_HEADER + name.len() + END_RECORD;

    // `vec![0; n]` is one zeroed allocation; `resize` would be a per-byte
    // loop in unoptimized builds.
    let mut out = vec![0u8; cd_start];
    out.reserve_exact(total - cd_start);
    fill_payload(&mut out[data_start..], seed);
    let crc = crc32fast::hash(&out[data_start..]);
    let size = payload_len as u32;
    let name_len = name.len() as u16;

    let mut local = Vec::with_capacity(data_start);
    put32(&mut local, 0x0403_4b50);
    put16(&mut local, 10); // version needed: 1.0 (stored)
    put16(&mut local, FLAG_UTF8);
    put16(&mut local, 0); // method: stored
    put16(&mut local, DOS_TIME);
    put16(&mut local, DOS_DATE);
    put32(&mut local, crc);
    put32(&mut local, size); // compressed size
    put32(&mut local, size); // uncompressed size
    put16(&mut local, name_len);
    put16(&mut local, 0); // extra field length
    local.extend_from_slice(name);
    out[..data_start].copy_from_slice(&local);

    put32(&mut out, 0x0201_4b50);
    put16(&mut out, 0x031e); // made by: Unix, zip 3.0
    put16(&mut out, 10);
    put16(&mut out, FLAG_UTF8);
    put16(&mut out, 0);
    put16(&mut out, DOS_TIME);
    put16(&mut out, DOS_DATE);
    put32(&mut out, crc);
    put32(&mut out, size);
    put32(&mut out, size);
    put16(&mut out, name_len);
    put16(&mut out, 0); // extra
    put16(&mut out, 0); // comment
    put16(&mut out, 0); // disk number start
    put16(&mut out, 1); // internal attributes: text file
    put32(&mut out, 0o100_644 << 16); // external attributes: regular file, rw-r--r--
    put32(&mut out, 0); // offset of the local header
    out.extend_from_slice(name);

    put32(&mut out, 0x0605_4b50);
    put16(&mut out, 0); // this disk
    put16(&mut out, 0); // disk with the central directory
    put16(&mut out, 1); // entries on this disk
    put16(&mut out, 1); // entries in total
    put32(&mut out, (CENTRAL_HEADER + name.len()) as u32);
    put32(&mut out, cd_start as u32);
    put16(&mut out, 0); // comment length
    debug_assert_eq!(out.len(), total);
    Bytes::from(out)
}

/// Printable pseudo-random text (letters, digits, space, newline).
///
/// Large payloads are made of 64 KiB windows into a 256 KiB random block,
/// each at a pseudo-random offset: a few memcpys per MiB instead of a
/// per-byte loop, which matters in unoptimized test builds (64 MiB payloads).
fn fill_payload(buf: &mut [u8], seed: u64) {
    const BLOCK: usize = 256 * 1024;
    const WINDOW: usize = 64 * 1024;
    let mut rng = SplitMix(seed ^ 0x5851_f42d_4c95_7f2d);
    if buf.len() <= BLOCK {
        fill_random(buf, &mut rng);
        return;
    }
    // The block twice in a row, so any window of it is one contiguous slice.
    let mut block = vec![0u8; 2 * BLOCK];
    fill_random(&mut block[..BLOCK], &mut rng);
    block.copy_within(..BLOCK, BLOCK);
    for chunk in buf.chunks_mut(WINDOW) {
        let at = (rng.next() % BLOCK as u64) as usize;
        chunk.copy_from_slice(&block[at..at + chunk.len()]);
    }
}

fn fill_random(buf: &mut [u8], rng: &mut SplitMix) {
    const ALPHABET: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 \n";
    for chunk in buf.chunks_mut(8) {
        let mut z = rng.next();
        for b in chunk {
            *b = ALPHABET[(z & 63) as usize];
            z >>= 8;
        }
    }
}

/// splitmix64: tiny, fast, good enough for test content.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// Reads the archive back the way an unzipper does: end record → central
    /// directory → local header → data, and checks every field against the
    /// data itself.
    fn parse(zip: &[u8]) -> (String, Vec<u8>) {
        let eocd = zip.len() - END_RECORD;
        assert_eq!(u32_at(zip, eocd), 0x0605_4b50, "end record signature");
        assert_eq!(u16_at(zip, eocd + 8), 1);
        assert_eq!(u16_at(zip, eocd + 10), 1);
        let cd_size = u32_at(zip, eocd + 12) as usize;
        let cd = u32_at(zip, eocd + 16) as usize;
        assert_eq!(
            cd + cd_size,
            eocd,
            "central directory ends at the end record"
        );
        assert_eq!(u32_at(zip, cd), 0x0201_4b50, "central header signature");
        assert_eq!(u16_at(zip, cd + 10), 0, "stored");
        let crc = u32_at(zip, cd + 16);
        let csize = u32_at(zip, cd + 20) as usize;
        let usize_ = u32_at(zip, cd + 24) as usize;
        assert_eq!(csize, usize_);
        let name_len = u16_at(zip, cd + 28) as usize;
        let local = u32_at(zip, cd + 42) as usize;
        let cd_name = &zip[cd + 46..cd + 46 + name_len];
        assert_eq!(cd + 46 + name_len, eocd);

        assert_eq!(u32_at(zip, local), 0x0403_4b50, "local header signature");
        assert_eq!(u32_at(zip, local + 14), crc);
        assert_eq!(u32_at(zip, local + 18) as usize, csize);
        let lname_len = u16_at(zip, local + 26) as usize;
        let extra = u16_at(zip, local + 28) as usize;
        assert_eq!(&zip[local + 30..local + 30 + lname_len], cd_name);
        let data_at = local + 30 + lname_len + extra;
        let data = &zip[data_at..data_at + csize];
        assert_eq!(data_at + csize, cd, "data ends where the directory starts");
        assert_eq!(crc32fast::hash(data), crc, "CRC32 of the data");
        (String::from_utf8(cd_name.to_vec()).unwrap(), data.to_vec())
    }

    #[test]
    fn archive_reads_back() {
        let zip = build("build-linux.txt", 3000, 7);
        let (name, data) = parse(&zip);
        assert_eq!(name, "build-linux.txt");
        assert_eq!(data.len(), 3000);
        assert!(data
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b' ' || *b == b'\n'));
    }

    #[test]
    fn empty_and_odd_sizes() {
        for n in [0, 1, 7, 8, 9, 65_537] {
            let (_, data) = parse(&build("ü.txt", n, 1));
            assert_eq!(data.len(), n);
        }
    }

    #[test]
    fn large_payloads_vary() {
        let (_, data) = parse(&build("big.txt", 3 << 20, 9));
        assert_eq!(data.len(), 3 << 20);
        assert!(data
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b' ' || *b == b'\n'));
        // windows land at different offsets: the MiBs differ from each other
        assert_ne!(data[..1 << 20], data[1 << 20..2 << 20]);
    }

    #[test]
    fn deterministic_per_seed() {
        assert_eq!(build("a.txt", 500, 3), build("a.txt", 500, 3));
        assert_ne!(build("a.txt", 500, 3), build("a.txt", 500, 4));
    }
}
