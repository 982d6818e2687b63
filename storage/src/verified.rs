//! Verified streaming of large blobs, so that a transfer broken off half-way
//! resumes where it stopped and every range is checked as it arrives.
//!
//! BLAKE3 is a tree hash: a blob of more than [`GROUP`] bytes splits into
//! groups of [`GROUP`] bytes (the last may be shorter), and each group is a
//! whole subtree of the blob's hash tree. The sender sends the groups'
//! chaining values (the *outboard*, 32 bytes per group) before the bytes;
//! the receiver merges them up the tree and compares the root with the
//! blob's name, which proves every chaining value; then each group is
//! checked against its own as it arrives. Only checked groups are kept, so
//! a partial blob on disk is always a verified prefix, and a transfer that
//! breaks resumes from it. A blob of [`GROUP`] bytes or less has no outboard
//! and is checked whole.
//!
//! This is what bao-tree does, at one fixed group size and without its
//! outboard files: the sender computes the outboard when it serves (one
//! pass of hashing, as fast as reading the file).

use std::io::{self, Read};

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

use crate::Hash;

/// The bytes of one verified group: 64 KiB (64 BLAKE3 chunks).
pub const GROUP: u64 = 64 * 1024;

/// A group's chaining value.
pub type Cv = [u8; 32];

/// How many groups (chaining values in the outboard) a blob of `len` bytes
/// has: none when it is checked whole.
pub fn groups(len: u64) -> u64 {
    if len <= GROUP {
        0
    } else {
        len.div_ceil(GROUP)
    }
}

/// The chaining value of group `index` (its bytes are the blob's from
/// `index * GROUP`). Only for blobs of more than one group.
pub fn group_cv(index: u64, bytes: &[u8]) -> Cv {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * GROUP);
    h.update(bytes);
    h.finalize_non_root()
}

/// The outboard of a blob of `len` bytes read from `reader`.
pub fn outboard(mut reader: impl Read, len: u64) -> io::Result<Vec<Cv>> {
    let n = groups(len);
    let mut out = Vec::with_capacity(n as usize);
    let mut buf = vec![0u8; GROUP as usize];
    for i in 0..n {
        let want = GROUP.min(len - i * GROUP) as usize;
        reader.read_exact(&mut buf[..want])?;
        out.push(group_cv(i, &buf[..want]));
    }
    Ok(out)
}

/// Whether `cvs` is the outboard of the blob named `hash` of `len` bytes.
pub fn check_outboard(hash: &Hash, len: u64, cvs: &[Cv]) -> bool {
    if len <= GROUP || cvs.len() as u64 != groups(len) {
        return false;
    }
    let (l, r) = split(cvs, len);
    Hash::from(merge_subtrees_root(&l, &r, Mode::Hash)) == *hash
}

/// The chaining values of the two subtrees under a node of `len` bytes.
fn split(cvs: &[Cv], len: u64) -> (Cv, Cv) {
    // A node of more than one group puts a power of two of chunks, at least
    // one group and so a whole number of them, on its left.
    let left = blake3::hazmat::left_subtree_len(len);
    let n = (left / GROUP) as usize;
    (subtree(&cvs[..n], left), subtree(&cvs[n..], len - left))
}

fn subtree(cvs: &[Cv], len: u64) -> Cv {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let (l, r) = split(cvs, len);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_outboard_proves_the_hash_at_every_shape_of_tree() {
        let g = GROUP as usize;
        for len in [
            g + 1,
            2 * g,
            2 * g + 5,
            3 * g,
            5 * g - 1,
            8 * g,
            13 * g + 77,
        ] {
            let bytes = data(len);
            let hash = Hash::of(&bytes);
            let cvs = outboard(&bytes[..], len as u64).unwrap();
            assert_eq!(cvs.len() as u64, groups(len as u64));
            assert!(check_outboard(&hash, len as u64, &cvs), "{len} bytes");
            // Each group checks against its own value.
            for (i, chunk) in bytes.chunks(g).enumerate() {
                assert_eq!(group_cv(i as u64, chunk), cvs[i]);
            }
            // A wrong value anywhere, a wrong number of groups or a wrong
            // hash fails. (A length off by less than a group passes here,
            // but then no bytes can match the last group's value.)
            let mut bad = cvs.clone();
            bad[cvs.len() / 2][0] ^= 1;
            assert!(!check_outboard(&hash, len as u64, &bad));
            assert!(!check_outboard(&hash, len as u64 + GROUP, &cvs));
            assert!(!check_outboard(&Hash::of(b"other"), len as u64, &cvs));
            // A byte changed in a group fails that group only.
            let mut changed = bytes[g..(2 * g).min(len)].to_vec();
            changed[0] ^= 1;
            assert_ne!(group_cv(1, &changed), cvs[1]);
        }
    }

    #[test]
    fn small_blobs_have_no_outboard() {
        assert_eq!(groups(0), 0);
        assert_eq!(groups(GROUP), 0);
        assert_eq!(groups(GROUP + 1), 2);
        assert!(outboard(&b"small"[..], 5).unwrap().is_empty());
        assert!(!check_outboard(&Hash::of(b"small"), 5, &[]));
    }
}
