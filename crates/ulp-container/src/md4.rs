//! MD4 (RFC 1320). libpulp puts the MD4 digest of the .dsc file's bytes in
//! the second half of every patch id, so packing byte-identical containers
//! needs it. It is not used for anything security-related (MD4 is broken).

const BLOCK: usize = 64;

/// The MD4 digest of `data`.
pub fn md4(data: &[u8]) -> [u8; 16] {
    let mut state: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut chunks = data.chunks_exact(BLOCK);
    for block in &mut chunks {
        compress(&mut state, block);
    }
    // Padding: 0x80, zeros up to 56 mod 64, then the length in bits (LE).
    let rest = chunks.remainder();
    let mut tail = Vec::with_capacity(2 * BLOCK);
    tail.extend_from_slice(rest);
    tail.push(0x80);
    while tail.len() % BLOCK != 56 {
        tail.push(0);
    }
    let bits = (data.len() as u64).wrapping_mul(8);
    tail.extend_from_slice(&bits.to_le_bytes());
    for block in tail.chunks_exact(BLOCK) {
        compress(&mut state, block);
    }
    let mut out = [0u8; 16];
    for (o, s) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&s.to_le_bytes());
    }
    out
}

fn compress(state: &mut [u32; 4], block: &[u8]) {
    let mut x = [0u32; 16];
    for (w, b) in x.iter_mut().zip(block.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    let [mut a, mut b, mut c, mut d] = *state;

    fn f(x: u32, y: u32, z: u32) -> u32 {
        (x & y) | (!x & z)
    }
    fn g(x: u32, y: u32, z: u32) -> u32 {
        (x & y) | (x & z) | (y & z)
    }
    fn h(x: u32, y: u32, z: u32) -> u32 {
        x ^ y ^ z
    }
    type Round = (fn(u32, u32, u32) -> u32, u32, [usize; 16], [u32; 4]);

    // Each round applies its function 16 times; the roles of a, b, c, d
    // rotate after every step, and the word order and shifts are the
    // round's own (RFC 1320, section 3.4).
    let rounds: [Round; 3] = [
        (
            f,
            0,
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            [3, 7, 11, 19],
        ),
        (
            g,
            0x5a82_7999,
            [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15],
            [3, 5, 9, 13],
        ),
        (
            h,
            0x6ed9_eba1,
            [0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15],
            [3, 9, 11, 15],
        ),
    ];
    for (func, k, order, shifts) in rounds {
        for (i, &w) in order.iter().enumerate() {
            let t = a
                .wrapping_add(func(b, c, d))
                .wrapping_add(x[w])
                .wrapping_add(k)
                .rotate_left(shifts[i % 4]);
            a = d;
            d = c;
            c = b;
            b = t;
        }
    }
    state[0] = state[0].wrapping_add(a);
    state[1] = state[1].wrapping_add(b);
    state[2] = state[2].wrapping_add(c);
    state[3] = state[3].wrapping_add(d);
}

#[cfg(test)]
mod tests {
    use super::md4;
    use ulp_abi::hex::hex;

    #[test]
    fn rfc1320_test_suite() {
        let cases = [
            ("", "31d6cfe0d16ae931b73c59d7e0c089c0"),
            ("a", "bde52cb31de33e46245e05fbdbd6fb24"),
            ("abc", "a448017aaf21d8525fc10ae87aa6729d"),
            ("message digest", "d9130a8164549fe818874806e1c7014b"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "d79e1c308aa5bbcdeea8ed63df412da9",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "043f8582f241db351ce627e153e7f0e4",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "e33b4ddc9c38f2199c3e7b164fcc0536",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex(&md4(input.as_bytes())), want, "MD4({input:?})");
        }
    }

    #[test]
    fn block_boundaries() {
        // Lengths around the 56/64-byte padding edges must not panic and
        // must differ from each other.
        let data = [0x61u8; 200];
        let mut seen = std::collections::HashSet::new();
        for n in 50..140 {
            assert!(seen.insert(md4(&data[..n])));
        }
    }
}
