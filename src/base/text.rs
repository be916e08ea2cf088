//! How numbers, shapes and files read to a user: one way each, shared by the CLI, the app and
//! the exports.
use std::path::Path;

/// `4.47G`, `28.6M`, `512`: three significant digits with an SI suffix; whole numbers below a
/// thousand as they are.
pub fn human(x: f64) -> String {
    let (v, s) = if x >= 1e12 {
        (x / 1e12, "T")
    } else if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else if x.fract() == 0.0 {
        return format!("{x:.0}");
    } else {
        (x, "")
    };
    if v >= 100.0 {
        format!("{v:.0}{s}")
    } else if v >= 10.0 {
        format!("{v:.1}{s}")
    } else {
        format!("{v:.2}{s}")
    }
}

/// A count for a table cell: blank for zero, so that the layers that do the work stand out.
pub fn blank_if_zero(x: f64) -> String {
    if x == 0.0 {
        String::new()
    } else {
        human(x)
    }
}

/// A tensor shape with its dimensions joined by `sep`: `1×96×56×56` for people, `1x96x56x56`
/// for CSV.
pub fn shape_text(s: &[usize], sep: char) -> String {
    let mut out = String::new();
    for (i, d) in s.iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        out.push_str(&d.to_string());
    }
    out
}

/// The last component of a path (the whole path where there is none), for lists and titles.
pub fn file_label(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(human(4_470_437_376.0), "4.47G");
        assert_eq!(human(28_589_128.0), "28.6M");
        assert_eq!(human(64.0), "64");
        assert_eq!(human(999.0), "999");
        assert_eq!(human(1_500.0), "1.50k");
        assert_eq!(human(0.25), "0.25");
        assert_eq!(blank_if_zero(0.0), "");
        assert_eq!(shape_text(&[1, 96, 56, 56], 'x'), "1x96x56x56");
        assert_eq!(file_label(Path::new("/a/b/c.png")), "c.png");
        assert_eq!(file_label(Path::new("/")), "/");
    }
}
