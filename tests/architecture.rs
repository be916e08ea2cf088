//! The map in ARCHITECTURE.md, checked: `src/` holds only the layers below, each module uses
//! only its own layer and the layers under it (read from `crate::…`, `$crate::…` and `super::…` paths
//! anywhere in the code, `use` lines and use trees included; comments and strings do not count),
//! `cli` and `app` never use each other, and no modules of one layer use one another in a
//! cycle. A folder's `mod.rs` may use the modules inside it (it declares them); every other edge
//! counts, the one from a module to its `mod.rs` included.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// `src/`'s layers, lowest first, with their rank: a layer may use the layers of lower rank.
/// `cli` and `app` share the top rank, so neither may use the other.
const LAYERS: &[(&str, usize)] = &[
    ("base", 0),
    ("kernels", 1),
    ("model", 2),
    ("io", 3),
    ("analysis", 4),
    ("train", 5),
    ("cli", 6),
    ("app", 6),
];

/// What `lib.rs` puts at the crate root, and the layer it comes from (a `#[macro_export]`
/// macro lives at the root too).
const ROOT_ITEMS: &[(&str, &str)] = &[
    ("Error", "base"),
    ("Result", "base"),
    ("Engine", "io"),
    ("simd_dispatch", "kernels"),
];

const MAX_ENTRIES: usize = 8;

type Module = Vec<String>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().find(|(l, _)| *l == layer).map(|(_, r)| *r)
}

/// Every `.rs` file under `src/` but `lib.rs` and `main.rs`, with its module path.
fn sources() -> Vec<(PathBuf, Module)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).expect("read src") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(src()).unwrap().with_extension("");
            let mut m: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if m == ["lib"] || m == ["main"] {
                return None;
            }
            if m.last().is_some_and(|l| l == "mod") {
                m.pop();
            }
            Some((p, m))
        })
        .collect()
}

/// The code with comments, string and character literals blanked (newlines kept, so byte
/// offsets still give line numbers).
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(k).copied().unwrap_or('\0');
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (at(i + 1) == '"' || at(i + 1) == '#')
            && !ident(at(i.wrapping_sub(1)))
        {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            while at(j) == '#' {
                j += 1;
            }
            if at(j) != '"' {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            out.extend(std::iter::repeat_n(' ', j + 1 - i));
            i = j + 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#') {
                    out.extend(std::iter::repeat_n(' ', hashes + 1));
                    i += hashes + 1;
                    break;
                }
                out.push(blank(c[i]));
                i += 1;
            }
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A character literal ('x', '\n', '\u{..}'); a lifetime has no closing quote.
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '\'' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// Inline modules (`mod tests { … }`): name and byte range of their body.
fn inline_mods(code: &[u8]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(k) = find_word(code, b"mod", i) {
        i = k + 3;
        let (name, after) = read_ident(code, skip_ws(code, i));
        let open = skip_ws(code, after);
        if name.is_empty() || code.get(open) != Some(&b'{') {
            continue;
        }
        let mut depth = 0;
        for (j, &b) in code.iter().enumerate().skip(open) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        out.push((name.clone(), open, j));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    out
}

fn find_word(code: &[u8], word: &[u8], from: usize) -> Option<usize> {
    (from..code.len().saturating_sub(word.len() - 1)).find(|&k| {
        code[k..].starts_with(word)
            && (k == 0 || !ident(code[k - 1] as char))
            && !code.get(k + word.len()).is_some_and(|&b| ident(b as char))
    })
}

fn skip_ws(code: &[u8], mut i: usize) -> usize {
    while code.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

fn read_ident(code: &[u8], i: usize) -> (String, usize) {
    let mut j = i;
    while code.get(j).is_some_and(|&b| ident(b as char)) {
        j += 1;
    }
    (String::from_utf8_lossy(&code[i..j]).into_owned(), j)
}

/// The paths of a use tree or path starting at `i` (just after `head::`), each as segments
/// after `head`; `{a, b::c}` groups expand to one path each. Returns the end position too.
fn read_tree(code: &[u8], i: usize) -> (Vec<Vec<String>>, usize) {
    let i = skip_ws(code, i);
    if code.get(i) == Some(&b'{') {
        let mut paths = Vec::new();
        let mut j = i + 1;
        loop {
            j = skip_ws(code, j);
            match code.get(j) {
                Some(b'}') | None => return (paths, j + 1),
                Some(b',') => j += 1,
                _ => {
                    let (sub, end) = read_tree(code, j);
                    if end <= j {
                        return (paths, j + 1);
                    }
                    paths.extend(sub);
                    j = end;
                    // Skip `as name` and anything else up to the next item.
                    while code.get(j).is_some_and(|&b| b != b',' && b != b'}') {
                        j += 1;
                    }
                }
            }
        }
    }
    if code.get(i) == Some(&b'*') {
        return (vec![vec![]], i + 1);
    }
    let (seg, j) = read_ident(code, i);
    if seg.is_empty() {
        return (vec![vec![]], i);
    }
    if code.get(j) == Some(&b':') && code.get(j + 1) == Some(&b':') {
        let (subs, end) = read_tree(code, j + 2);
        let paths = subs
            .into_iter()
            .map(|mut s| {
                s.insert(0, seg.clone());
                s
            })
            .collect();
        return (paths, end);
    }
    (vec![vec![seg]], j)
}

/// A reference out of a module: where, the path as written, and the path from the crate root.
struct Ref {
    line: usize,
    written: String,
    absolute: Module,
}

fn references(text: &str, module: &Module) -> Vec<Ref> {
    let code = strip(text);
    let code = code.as_bytes();
    let inline = inline_mods(code);
    let line_of = |pos: usize| code[..pos].iter().filter(|&&b| b == b'\n').count() + 1;
    let mut out = Vec::new();
    for head in ["crate", "super"] {
        let mut i = 0;
        while let Some(k) = find_word(code, head.as_bytes(), i) {
            i = k + head.len();
            if !code[i..].starts_with(b"::") {
                continue;
            }
            // The second `super` of `super::super::` belongs to the first.
            if head == "super" && k >= 2 && &code[k - 2..k] == b"::" {
                continue;
            }
            let mut here: Module = module.clone();
            for (name, start, end) in &inline {
                if (*start..*end).contains(&k) {
                    here.push(name.clone());
                }
            }
            let (paths, _) = read_tree(code, i + 2);
            for path in paths {
                let mut abs = if head == "crate" {
                    vec![]
                } else {
                    here.clone()
                };
                if head == "super" {
                    abs.pop();
                }
                let mut rest = path.as_slice();
                while rest.first().is_some_and(|s| s == "super") {
                    abs.pop();
                    rest = &rest[1..];
                }
                abs.extend(rest.iter().filter(|s| *s != "self").cloned());
                out.push(Ref {
                    line: line_of(k),
                    written: format!("{head}::{}", path.join("::")),
                    absolute: abs,
                });
            }
        }
    }
    out
}

/// The module (file) a path lands in: its longest prefix that is a module.
fn target(abs: &Module, modules: &BTreeSet<Module>) -> Module {
    (0..=abs.len())
        .rev()
        .map(|n| abs[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

fn layer_of(abs: &Module) -> Option<&str> {
    let first = abs.first()?;
    if rank(first).is_some() {
        return Some(first.as_str());
    }
    ROOT_ITEMS
        .iter()
        .find(|(item, _)| item == first)
        .map(|(_, l)| *l)
}

struct Graph {
    edges: BTreeMap<Module, BTreeMap<Module, String>>,
    violations: Vec<String>,
}

fn graph() -> Graph {
    let files = sources();
    let modules: BTreeSet<Module> = files.iter().map(|(_, m)| m.clone()).collect();
    let mut g = Graph {
        edges: BTreeMap::new(),
        violations: Vec::new(),
    };
    for (path, module) in &files {
        let text = fs::read_to_string(path).expect("read source");
        let rel = path
            .strip_prefix(src().parent().unwrap())
            .unwrap()
            .display();
        let from = module[0].as_str();
        for r in references(&text, module) {
            let at = format!("{rel}:{}", r.line);
            let Some(to) = layer_of(&r.absolute) else {
                g.violations.push(format!(
                    "{at}: `{}` is not in a layer (every crate path starts with one of {:?})",
                    r.written,
                    LAYERS.iter().map(|l| l.0).collect::<Vec<_>>()
                ));
                continue;
            };
            if to != from && rank(to) >= rank(from) {
                g.violations.push(format!(
                    "{at}: `{}`: {from} may not use {to} (a layer uses only the layers under it)",
                    r.written
                ));
            }
            let dest = target(&r.absolute, &modules);
            if to == from && dest != *module && !dest.starts_with(module) {
                g.edges
                    .entry(module.clone())
                    .or_default()
                    .entry(dest)
                    .or_insert(at);
            }
        }
    }
    g
}

/// Every cycle found by a depth-first search (one per back edge), each as `a -> b -> a` with
/// where each edge is.
fn cycles(edges: &BTreeMap<Module, BTreeMap<Module, String>>) -> Vec<String> {
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeMap<Module, String>>,
        stack: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
        out: &mut Vec<String>,
    ) {
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flat_map(|e| e.keys()) {
            if let Some(k) = stack.iter().position(|s| s == next) {
                let mut ring: Vec<&Module> = stack[k..].iter().collect();
                ring.push(next);
                let steps: Vec<String> = ring
                    .windows(2)
                    .map(|w| {
                        format!(
                            "{} -> {} ({})",
                            w[0].join("::"),
                            w[1].join("::"),
                            edges[w[0]][w[1]]
                        )
                    })
                    .collect();
                out.push(steps.join(", "));
            } else if !done.contains(next) {
                visit(next, edges, stack, done, out);
            }
        }
        stack.pop();
        done.insert(m.clone());
    }
    let (mut done, mut out) = (BTreeSet::new(), Vec::new());
    for m in edges.keys() {
        if !done.contains(m) {
            visit(m, edges, &mut Vec::new(), &mut done, &mut out);
        }
    }
    out
}

#[test]
fn src_holds_only_the_layers() {
    let mut extra = Vec::new();
    let mut count = 0;
    for e in fs::read_dir(src()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name == "lib.rs" || name == "main.rs" {
            continue;
        }
        count += 1;
        let stem = name.strip_suffix(".rs").unwrap_or(&name);
        if rank(stem).is_none() {
            extra.push(name);
        }
    }
    assert!(
        extra.is_empty(),
        "src/ holds {extra:?}, which are not layers: put them in one (ARCHITECTURE.md says which)"
    );
    assert!(
        count <= MAX_ENTRIES,
        "src/ holds {count} entries besides lib.rs and main.rs"
    );
}

#[test]
fn every_import_points_down() {
    let g = graph();
    assert!(
        g.violations.is_empty(),
        "imports against the layers' direction (see ARCHITECTURE.md):\n{}",
        g.violations.join("\n")
    );
    // The check sees something: the engine is built on the model.
    assert!(
        g.edges.values().flat_map(|e| e.keys()).count() > 50,
        "too few edges: is the parser broken?"
    );
}

#[test]
fn no_module_cycles_within_a_layer() {
    let found = cycles(&graph().edges);
    assert!(
        found.is_empty(),
        "modules that use one another in a cycle:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_reader_sees_paths_trees_and_super() {
    let text = "use crate::model::{plan::Plan, layer_id::{self, LayerId}};\n\
                // crate::app::ignored in a comment\n\
                let s = \"crate::app::ignored in a string\";\n\
                fn f() -> crate::Result<()> { super::super::io::engine::weights_dir(); }\n\
                mod tests { use super::*; }\n";
    let m: Module = vec!["analysis".into(), "trace".into()];
    let refs: Vec<(usize, String)> = references(text, &m)
        .into_iter()
        .map(|r| (r.line, r.absolute.join("::")))
        .collect();
    assert_eq!(
        refs,
        [
            (1, "model::plan::Plan".to_string()),
            (1, "model::layer_id".to_string()),
            (1, "model::layer_id::LayerId".to_string()),
            (4, "Result".to_string()),
            (4, "io::engine::weights_dir".to_string()),
            (5, "analysis::trace".to_string()),
        ]
    );
}
