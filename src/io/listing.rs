//! Folders of images: every image below a folder, recursively and in name order, with a limit.
//! Links to folders are not followed (a link loop cannot trap the walk), and depth is capped.
use crate::base::error::{Error, Result};
use crate::io::preprocess::is_image_file;
use std::path::{Path, PathBuf};

/// Deepest folder nesting walked.
pub const MAX_DEPTH: usize = 32;

/// The image files below `dir` (by extension; decoding goes by content later), sorted by path,
/// at most `limit` of them.
pub fn list_images(dir: &Path, limit: Option<usize>) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::file(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::file(dir, "is not a folder"));
    }
    let limit = limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    walk(dir, 0, limit, &mut out)?;
    if out.is_empty() {
        return Err(Error::file(
            dir,
            format!(
                "holds no image ({})",
                crate::io::preprocess::IMAGE_EXTENSIONS.join(", ")
            ),
        ));
    }
    Ok(out)
}

fn walk(dir: &Path, depth: usize, limit: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let mut entries: Vec<(PathBuf, std::fs::FileType)> = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_type().ok().map(|t| (e.path(), t)))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, kind) in entries {
        if out.len() >= limit {
            break;
        }
        if kind.is_dir() {
            walk(&path, depth + 1, limit, out)?;
        } else if is_image_file(&path) && !kind.is_dir() {
            out.push(path);
        }
    }
    Ok(())
}

/// `T-shirt/top` → `tshirttop`: what is left when case and punctuation go.
fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The model's class names, looked up by what a folder or file is called: the whole label or
/// any part of it between commas or slashes (`T-shirt/top` answers to `tshirt`, `tench, Tinca
/// tinca` to `tench`), case and punctuation ignored, or the class's index.
pub struct LabelMatcher {
    names: std::collections::HashMap<String, Vec<usize>>,
    classes: usize,
}

impl LabelMatcher {
    pub fn new(labels: &[String]) -> Self {
        let mut names: std::collections::HashMap<String, Vec<usize>> = Default::default();
        for (i, l) in labels.iter().enumerate() {
            let parts = std::iter::once(l.as_str()).chain(l.split([',', '/']));
            for p in parts {
                let key = normalise(p);
                let entry = names.entry(key).or_default();
                if !entry.contains(&i) {
                    entry.push(i);
                }
            }
        }
        names.remove("");
        Self {
            names,
            classes: labels.len(),
        }
    }

    /// The class `name` designates; `Err` lists the classes when it could be several.
    pub fn find(&self, name: &str) -> std::result::Result<Option<usize>, String> {
        let key = normalise(name);
        if let Some(c) = self.names.get(&key) {
            return match c[..] {
                [one] => Ok(Some(one)),
                _ => Err(format!(
                    "`{name}` could be any of the classes {c:?}; rename it to one class's full name or index"
                )),
            };
        }
        Ok(key
            .parse::<usize>()
            .ok()
            .filter(|&i| i < self.classes && name.chars().all(|c| c.is_ascii_digit())))
    }
}

/// The label part of `ankle_boot_12.png`: what comes before the last `_<digits>`.
fn stem_label(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let (label, n) = stem.rsplit_once('_')?;
    (!n.is_empty() && n.chars().all(|c| c.is_ascii_digit())).then(|| label.to_string())
}

/// Each image's class from the folder's layout: `root/<class>/…` (ImageFolder) for images in
/// sub-folders, `root/<label>_<n>.<ext>` for images directly in `root`; `None` where the layout
/// says nothing. Sub-folders that match no class when others do are an error (a typo would
/// otherwise drop their images from the scores); when none matches, they are not class folders
/// and every image there is unlabelled.
pub fn labels_from_layout(
    root: &Path,
    images: &[PathBuf],
    labels: &[String],
) -> Result<Vec<Option<usize>>> {
    let m = LabelMatcher::new(labels);
    let class_dir = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(root).ok()?;
        let mut parts = rel.components();
        let first = parts.next()?;
        parts.next()?; // a file directly in root has no class folder
        Some(first.as_os_str().to_string_lossy().into_owned())
    };
    let mut dirs: Vec<String> = images.iter().filter_map(|p| class_dir(p)).collect();
    dirs.sort();
    dirs.dedup();
    let mut by_dir = std::collections::HashMap::new();
    for d in &dirs {
        let found = m.find(d).map_err(|e| Error::file(root.join(d), e))?;
        by_dir.insert(d.clone(), found);
    }
    let unmatched: Vec<&String> = dirs.iter().filter(|d| by_dir[*d].is_none()).collect();
    if !unmatched.is_empty() && unmatched.len() < dirs.len() {
        return Err(Error::file(
            root,
            format!(
                "the sub-folders {unmatched:?} match none of the model's classes while others do: rename them to a class name or index"
            ),
        ));
    }
    images
        .iter()
        .map(|p| match class_dir(p) {
            Some(d) => Ok(by_dir[&d]),
            None => match stem_label(p) {
                Some(l) => m.find(&l).map_err(|e| Error::file(p, e)),
                None => Ok(None),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fashion() -> Vec<String> {
        crate::io::labels::FASHION_LABELS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn names_match_whole_labels_parts_and_indices() {
        let m = LabelMatcher::new(&fashion());
        assert_eq!(m.find("tshirt"), Ok(Some(0)));
        assert_eq!(m.find("T-shirt_top"), Ok(Some(0)));
        assert_eq!(m.find("ANKLE BOOT"), Ok(Some(9)));
        assert_eq!(m.find("ankle_boot"), Ok(Some(9)));
        assert_eq!(m.find("7"), Ok(Some(7)));
        assert_eq!(m.find("10"), Ok(None));
        assert_eq!(m.find("cat"), Ok(None));
        let dup: Vec<String> = vec!["crane, bird".into(), "crane, machine".into()];
        let m = LabelMatcher::new(&dup);
        assert!(m.find("crane").unwrap_err().contains("[0, 1]"));
        assert_eq!(m.find("crane machine"), Ok(Some(1)));
    }

    #[test]
    fn the_layout_gives_the_labels() {
        let root = Path::new("/d");
        let p = |s: &str| root.join(s);
        let imgs = vec![
            p("Sneaker/a.png"),
            p("3/b.png"),
            p("bag_18.png"),
            p("photo.png"),
        ];
        let got = labels_from_layout(root, &imgs, &fashion()).unwrap();
        assert_eq!(got, vec![Some(7), Some(3), Some(8), None]);
        // A typo among class folders is refused; folders that are not classes at all are not.
        let typo = vec![p("Sneaker/a.png"), p("Sneeker/b.png")];
        let e = labels_from_layout(root, &typo, &fashion())
            .unwrap_err()
            .to_string();
        assert!(e.contains("Sneeker"), "{e}");
        let holiday = vec![p("rome/a.png"), p("paris/b.png")];
        assert_eq!(
            labels_from_layout(root, &holiday, &fashion()).unwrap(),
            vec![None, None]
        );
    }
}
