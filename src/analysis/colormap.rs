//! Colour maps for activations: perceptually uniform ones for magnitudes (viridis, magma, grey)
//! and a diverging one for signed values, centred on zero.
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Colormap {
    #[default]
    Viridis,
    Magma,
    Grey,
    /// Blue below zero, white at zero, red above (ColorBrewer RdBu, reversed).
    Diverging,
    /// Red to yellow to green (ColorBrewer RdYlGn, reversed: green is low), as RepLKNet draws
    /// effective receptive fields.
    RdYlGn,
}

// Samples of matplotlib's maps at 0, 1/8, …, 1; linear interpolation between them stays within
// a couple of levels of the 256-entry tables.
const VIRIDIS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [71, 44, 122],
    [59, 81, 139],
    [44, 113, 142],
    [33, 144, 141],
    [39, 173, 129],
    [92, 200, 99],
    [170, 220, 50],
    [253, 231, 37],
];
const MAGMA: [[u8; 3]; 9] = [
    [0, 0, 4],
    [28, 16, 68],
    [79, 18, 123],
    [129, 37, 129],
    [181, 54, 122],
    [229, 80, 100],
    [251, 135, 97],
    [254, 194, 135],
    [252, 253, 191],
];
const RDYLGN_R: [[u8; 3]; 9] = [
    [0, 104, 55],
    [26, 152, 80],
    [102, 189, 99],
    [166, 217, 106],
    [255, 255, 191],
    [253, 174, 97],
    [244, 109, 67],
    [215, 48, 39],
    [165, 0, 38],
];
const RDBU_R: [[u8; 3]; 9] = [
    [5, 48, 97],
    [33, 102, 172],
    [67, 147, 195],
    [146, 197, 222],
    [247, 247, 247],
    [244, 165, 130],
    [214, 96, 77],
    [178, 24, 43],
    [103, 0, 31],
];

impl Colormap {
    pub const ALL: [Colormap; 5] = [
        Colormap::Viridis,
        Colormap::Magma,
        Colormap::Grey,
        Colormap::Diverging,
        Colormap::RdYlGn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Colormap::Viridis => "viridis",
            Colormap::Magma => "magma",
            Colormap::Grey => "grey",
            Colormap::Diverging => "diverging (RdBu)",
            Colormap::RdYlGn => "RdYlGn",
        }
    }

    /// Signed maps put zero in the middle of the range.
    pub fn is_diverging(self) -> bool {
        self == Colormap::Diverging
    }

    /// The colour of `t` in `[0, 1]` (clamped; NaN shows as magenta so it cannot pass unseen).
    pub fn rgb(self, t: f32) -> [u8; 3] {
        if t.is_nan() {
            return [255, 0, 255];
        }
        let t = t.clamp(0.0, 1.0);
        let table = match self {
            Colormap::Viridis => &VIRIDIS,
            Colormap::Magma => &MAGMA,
            Colormap::Diverging => &RDBU_R,
            Colormap::RdYlGn => &RDYLGN_R,
            Colormap::Grey => {
                let v = (t * 255.0).round() as u8;
                return [v, v, v];
            }
        };
        let x = t * (table.len() - 1) as f32;
        let i = (x.floor() as usize).min(table.len() - 2);
        let f = x - i as f32;
        let (a, b) = (table[i], table[i + 1]);
        std::array::from_fn(|k| (a[k] as f32 + (b[k] as f32 - a[k] as f32) * f).round() as u8)
    }

    /// The value range to map onto the colours: as given, or symmetric about zero for a
    /// diverging map (so that white means zero).
    pub fn range(self, lo: f32, hi: f32) -> (f32, f32) {
        if self.is_diverging() {
            let m = lo.abs().max(hi.abs()).max(f32::MIN_POSITIVE);
            (-m, m)
        } else {
            (lo, hi)
        }
    }

    /// The colour of `v` on a `[lo, hi]` scale (a flat range maps to the middle colour).
    pub fn map(self, v: f32, lo: f32, hi: f32) -> [u8; 3] {
        let span = hi - lo;
        let t = if span > 0.0 { (v - lo) / span } else { 0.5 };
        self.rgb(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_and_middle() {
        assert_eq!(Colormap::Viridis.rgb(0.0), VIRIDIS[0]);
        assert_eq!(Colormap::Viridis.rgb(1.0), VIRIDIS[8]);
        assert_eq!(Colormap::Grey.rgb(0.5), [128, 128, 128]);
        assert_eq!(Colormap::Diverging.map(0.0, -3.0, 3.0), [247, 247, 247]);
        assert_eq!(Colormap::Magma.rgb(f32::NAN), [255, 0, 255]);
        assert_eq!(Colormap::Magma.rgb(7.0), MAGMA[8]);
    }

    #[test]
    fn diverging_range_is_symmetric() {
        assert_eq!(Colormap::Diverging.range(-1.0, 4.0), (-4.0, 4.0));
        assert_eq!(Colormap::Viridis.range(-1.0, 4.0), (-1.0, 4.0));
    }

    #[test]
    fn interpolates_monotonically_in_grey_level() {
        let lum = |c: [u8; 3]| c[0] as u32 * 3 + c[1] as u32 * 6 + c[2] as u32;
        for cm in [Colormap::Viridis, Colormap::Magma, Colormap::Grey] {
            let v: Vec<u32> = (0..=32).map(|i| lum(cm.rgb(i as f32 / 32.0))).collect();
            assert!(v.windows(2).all(|w| w[0] <= w[1]), "{cm:?}: {v:?}");
        }
    }
}
