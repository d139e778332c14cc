//! The interleaved "groups of 8 lanes" layout shared by decoded weight rows and quantized
//! activation rows.
//!
//! A row of `k` values, in its natural order and padded with zeros, is cut into groups of
//! 8 lanes. A lane is a run of consecutive values that share one scale: a 32-value block of
//! the legacy formats, a 32-value sub-block of Q4_K, a 16-value sub-block of Q6_K. *Wide*
//! groups have 32-value lanes (256 bytes), *narrow* groups 16-value lanes (128 bytes); all
//! wide groups come first. Inside a group the bytes are stored as 32-byte vectors where
//! vector `v` holds bytes `4v..4v + 4` of lane 0, then of lane 1, ..., lane 7. Lane `i` of
//! a wide group is its `i`-th run of 32 values; lanes of narrow groups take the runs of 16
//! in the order of [`narrow_run`]. Summing
//! byte products four at a time into 32-bit elements (`vpmaddubsw` + `vpmaddwd`, or
//! `vpdpbusd`) over a group's vectors thus leaves lane `i`'s dot product in element `i`.
//!
//! Per-lane values (scales, minimums, corrections) are stored as `f32`/`i32` arrays with
//! 8 entries per group, in group order.

use crate::QuantType;

/// Lanes per group: one 32-bit element of a 256-bit vector each.
pub(crate) const LANES: usize = 8;
/// Bytes of one interleaved vector.
pub(crate) const VECTOR: usize = 32;

/// The run of 16 values held by lane `lane` of a narrow group: even runs in lanes 0 to 3,
/// odd runs in lanes 4 to 7. Natural 32-byte vectors hold runs `2m` and `2m + 1` (a legacy
/// block, or a Q6_K quarter); two 4x4 transposes inside 128-bit halves leave them in this
/// order with no shuffle across halves.
pub(crate) const fn narrow_run(lane: usize) -> usize {
    2 * (lane % 4) + lane / 4
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Groups of 8 lanes of 32 values (8 vectors).
    pub wide: usize,
    /// Groups of 8 lanes of 16 values (4 vectors), after the wide ones.
    pub narrow: usize,
}

impl Layout {
    pub fn new(ty: QuantType, k: usize) -> Layout {
        match ty {
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q8_0 => {
                // One lane per block; a tail of up to 4 blocks goes in a narrow group (each
                // block split over 2 lanes) so that a row of 28 blocks (k = 896) pads nothing.
                let blocks = k / 32;
                match blocks % 8 {
                    0 => Layout {
                        wide: blocks / 8,
                        narrow: 0,
                    },
                    1..=4 => Layout {
                        wide: blocks / 8,
                        narrow: 1,
                    },
                    _ => Layout {
                        wide: blocks / 8 + 1,
                        narrow: 0,
                    },
                }
            }
            // Eight 32-value sub-blocks per super-block: one wide group.
            QuantType::Q4K => Layout {
                wide: k / 256,
                narrow: 0,
            },
            // Sixteen 16-value sub-blocks per super-block: two narrow groups.
            QuantType::Q6K => Layout {
                wide: 0,
                narrow: k / 128,
            },
        }
    }

    pub fn groups(&self) -> usize {
        self.wide + self.narrow
    }

    /// Lanes in a row, i.e. entries of the per-lane arrays.
    pub fn lanes(&self) -> usize {
        self.groups() * LANES
    }

    /// Bytes of a row, padding included.
    pub fn bytes(&self) -> usize {
        self.wide * 8 * VECTOR + self.narrow * 4 * VECTOR
    }

    /// Values of a lane in group `g`.
    pub fn lane_len(&self, g: usize) -> usize {
        if g < self.wide { 32 } else { 16 }
    }

    /// Offset in the natural row of the first value of lane `i` of group `g`.
    pub fn lane_start(&self, g: usize, i: usize) -> usize {
        if g < self.wide {
            g * LANES * 32 + i * 32
        } else {
            self.wide * LANES * 32 + (g - self.wide) * LANES * 16 + narrow_run(i) * 16
        }
    }

    /// Interleaves a row given in natural order (`bytes()` values, padding included).
    #[inline(always)]
    pub fn interleave<T: Copy>(&self, natural: &[T], out: &mut [T]) {
        debug_assert_eq!(natural.len(), self.bytes());
        debug_assert_eq!(out.len(), self.bytes());
        let mut start = 0;
        for g in 0..self.groups() {
            let lane_len = self.lane_len(g);
            let out = &mut out[start..start + LANES * lane_len];
            for lane in 0..LANES {
                let values = &natural[self.lane_start(g, lane)..][..lane_len];
                for (v, values) in values.chunks_exact(4).enumerate() {
                    out[v * VECTOR + 4 * lane..][..4].copy_from_slice(values);
                }
            }
            start += LANES * lane_len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_tails_pad_at_most_three_blocks() {
        let groups = |k| {
            let l = Layout::new(QuantType::Q8_0, k);
            (l.wide, l.narrow, l.bytes())
        };
        assert_eq!(groups(896), (3, 1, 896));
        assert_eq!(groups(4864), (19, 0, 4864));
        assert_eq!(groups(32), (0, 1, 128));
        assert_eq!(groups(5 * 32), (1, 0, 256));
        assert_eq!(groups(0), (0, 0, 0));
        assert_eq!(Layout::new(QuantType::Q6K, 512).bytes(), 512);
        assert_eq!(Layout::new(QuantType::Q4K, 512).bytes(), 512);
    }

    #[test]
    fn interleaving_puts_lane_bytes_in_their_element() {
        let layout = Layout { wide: 1, narrow: 1 };
        let natural: Vec<u16> = (0..384).collect();
        let mut out = vec![0; 384];
        layout.interleave(&natural, &mut out);
        // Vector 1 of the wide group: bytes 4..8 of lane 0, then of lane 1 (at 32..).
        assert_eq!(&out[32..40], &[4, 5, 6, 7, 36, 37, 38, 39]);
        // Narrow group starts at 256; its lane 1 holds run 2 (256 + 32), lane 4 run 1.
        assert_eq!(&out[256..264], &[256, 257, 258, 259, 288, 289, 290, 291]);
        assert_eq!(&out[256 + 16..256 + 20], &[272, 273, 274, 275]);
    }
}
