//! Precompressed variants of text files.

use std::io::Write;

use edgebox_storage::Encoding;

/// Files smaller than this are not worth compressing.
const MIN_SIZE: usize = 256;

/// Brotli and gzip copies of `bytes` that are at least 5 % smaller.
pub fn variants(bytes: &[u8]) -> Vec<(Encoding, Vec<u8>)> {
    if bytes.len() < MIN_SIZE {
        return Vec::new();
    }
    let worth = |packed: &[u8]| packed.len() * 100 <= bytes.len() * 95;
    let mut out = Vec::new();
    let br = brotli_bytes(bytes);
    if worth(&br) {
        out.push((Encoding::Br, br));
    }
    let gz = gzip_bytes(bytes);
    if worth(&gz) {
        out.push((Encoding::Gzip, gz));
    }
    out
}

fn brotli_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / 3);
    let params = brotli::enc::BrotliEncoderParams {
        quality: 9,
        ..Default::default()
    };
    let mut input = bytes;
    // Writing into a Vec cannot fail.
    let _ = brotli::BrotliCompress(&mut input, &mut out, &params);
    out
}

fn gzip_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 3),
        flate2::Compression::best(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn variants_decompress_to_the_original() {
        let text = "<p>edgebox serves static sites</p>\n".repeat(200);
        let v = variants(text.as_bytes());
        assert_eq!(v.len(), 2);
        for (enc, packed) in v {
            assert!(packed.len() < text.len() / 5, "{enc:?}");
            let mut back = Vec::new();
            match enc {
                Encoding::Br => {
                    brotli::Decompressor::new(&packed[..], 4096)
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Encoding::Gzip => {
                    flate2::read::GzDecoder::new(&packed[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
            }
            assert_eq!(back, text.as_bytes());
        }
    }

    #[test]
    fn small_or_incompressible_files_get_none() {
        assert!(variants(b"tiny").is_empty());
        // xorshift64: bytes with no structure a compressor can use.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert!(variants(&noise).is_empty());
    }
}
