//! Opening and saving where no native file dialog can be shown (no desktop portal: minimal
//! window managers, many remote sessions): the dialog returns at once with nothing, so the app
//! says so and asks for a path in a window of its own, with completion from the folder typed.
use super::views::ImageSource;
use super::worker::SaveContent;
use super::{Request, Shared};
use crate::io::engine::ModelSpec;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the path is for.
pub enum Purpose {
    OpenImage,
    OpenWeights,
    OpenFolder,
    Save(SaveContent),
    Screenshot,
}

impl Purpose {
    fn verb(&self) -> &'static str {
        match self {
            Purpose::OpenImage | Purpose::OpenWeights | Purpose::OpenFolder => "Open",
            Purpose::Save(_) | Purpose::Screenshot => "Save",
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Purpose::OpenImage => "an image",
            Purpose::OpenWeights => "weights (a file or a folder)",
            Purpose::OpenFolder => "a folder of images",
            Purpose::Save(_) => "the file",
            Purpose::Screenshot => "the screenshot",
        }
    }
}

pub struct PathPrompt {
    pub purpose: Purpose,
    pub text: String,
    pub message: String,
    /// The completions of `text`, read once per change rather than once per frame.
    shown: Option<(String, Vec<String>)>,
    focused: bool,
}

impl PathPrompt {
    pub fn new(purpose: Purpose, text: &str, message: &str) -> Self {
        Self {
            purpose,
            text: text.to_string(),
            message: message.to_string(),
            shown: None,
            focused: false,
        }
    }

    fn completions(&mut self) -> Vec<String> {
        match &self.shown {
            Some((t, c)) if *t == self.text => c.clone(),
            _ => {
                let c = completions(&self.text, MAX_COMPLETIONS);
                self.shown = Some((self.text.clone(), c.clone()));
                c
            }
        }
    }
}

const MAX_COMPLETIONS: usize = 12;

/// A native dialog that returns nothing this fast was never shown.
const NO_DIALOG: Duration = Duration::from_millis(150);

/// Set (to anything) to always use the in-app path field, never a native dialog.
pub const NO_DIALOG_ENV: &str = "CONVNEXT_EXPLORER_NO_DIALOG";

/// Runs a native dialog; where none could be shown, opens the in-app prompt instead (the user
/// closing a real dialog takes longer than a missing portal does to answer).
pub fn with_dialog(
    shared: &mut Shared,
    purpose: Purpose,
    suggested: &str,
    dialog: impl FnOnce() -> Option<PathBuf>,
) {
    if std::env::var_os(NO_DIALOG_ENV).is_some() {
        shared.prompt = Some(PathPrompt::new(purpose, suggested, "Type a path."));
        return;
    }
    let t = Instant::now();
    match dialog() {
        Some(p) => act(shared, purpose, p),
        None if t.elapsed() < NO_DIALOG => {
            let message = "No file dialog could be shown here (no desktop portal): type a path.";
            shared.prompt = Some(PathPrompt::new(purpose, suggested, message));
        }
        None => {}
    }
}

/// Does what the path was asked for.
fn act(shared: &mut Shared, purpose: Purpose, path: PathBuf) {
    let r = match purpose {
        Purpose::OpenImage => Request::OpenImage(ImageSource::Path(path)),
        Purpose::OpenWeights => Request::Load(ModelSpec::Weights(path)),
        Purpose::OpenFolder => Request::RunFolder(path),
        Purpose::Save(content) => Request::Save { path, content },
        Purpose::Screenshot => Request::Screenshot(path),
    };
    shared.request(r);
}

/// Entries of the typed path's folder whose names start with what is typed after the last `/`
/// (folders end in `/`), sorted, at most `max`.
pub fn completions(typed: &str, max: usize) -> Vec<String> {
    let (dir, prefix) = match typed.rfind('/') {
        Some(i) => (&typed[..=i], &typed[i + 1..]),
        None => ("", typed),
    };
    let read = if dir.is_empty() {
        Path::new(".")
    } else {
        Path::new(dir)
    };
    let Ok(rd) = std::fs::read_dir(read) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            (name.starts_with(prefix) && !name.starts_with('.'))
                .then(|| format!("{dir}{name}{}", if is_dir { "/" } else { "" }))
        })
        .collect();
    out.sort();
    out.truncate(max);
    out
}

/// `~/x` as `$HOME/x`; anything else as typed.
fn expand_home(typed: &str) -> PathBuf {
    match (typed.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(typed),
    }
}

/// The longest start every completion shares (what Tab fills in).
pub fn common_prefix(options: &[String]) -> Option<String> {
    let (first, rest) = options.split_first()?;
    let mut prefix = first.as_str();
    for o in rest {
        while !o.starts_with(prefix) {
            // Drop the last character (not byte): names need not be ASCII.
            let cut = prefix.char_indices().last().map_or(0, |(i, _)| i);
            prefix = &prefix[..cut];
        }
    }
    Some(prefix.to_string())
}

/// The prompt's window, while one is open.
pub fn window(ctx: &egui::Context, shared: &mut Shared) {
    let Some(prompt) = &mut shared.prompt else {
        return;
    };
    let mut done = None;
    let mut cancel = false;
    let title = format!("{} {}", prompt.purpose.verb(), prompt.purpose.what());
    // Modal, and always in the middle: a click meant for the field never lands on the view
    // behind it.
    let modal = egui::Modal::new(egui::Id::unique("path prompt")).show(ctx, |ui| {
        ui.heading(title);
        done = prompt_ui(ui, prompt);
        cancel = ui.button("Cancel").clicked();
    });
    let open = !(cancel || modal.should_close());
    if let Some(path) = done {
        if let Some(p) = shared.prompt.take() {
            act(shared, p.purpose, path);
        }
    } else if !open {
        shared.prompt = None;
    }
}

/// The field, its completions and the button; the path once the user has chosen one.
fn prompt_ui(ui: &mut egui::Ui, prompt: &mut PathPrompt) -> Option<PathBuf> {
    ui.label(&prompt.message);
    let r = ui.add(
        egui::TextEdit::singleline(&mut prompt.text)
            .hint_text("/path/to/file  (Tab completes)")
            .lock_focus(true)
            .desired_width(420.0),
    );
    if !prompt.focused {
        r.request_focus();
        prompt.focused = true;
    }
    // Typed over the pre-filled folder, an absolute or home path starts the path again.
    if let Some(fresh) = r.changed().then(|| restarted(&prompt.text)).flatten() {
        prompt.text = fresh;
        move_cursor_to_end(ui, r.id, &prompt.text);
    }
    let options = prompt.completions();
    if r.has_focus() && ui.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::Tab)) {
        if let Some(p) = common_prefix(&options) {
            prompt.text = p;
            move_cursor_to_end(ui, r.id, &prompt.text);
        }
    }
    let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
    for c in options {
        if ui.small_button(&c).clicked() {
            prompt.text = c;
        }
    }
    let ok = !prompt.text.trim().is_empty();
    let verb = prompt.purpose.verb();
    let clicked = ui.add_enabled(ok, egui::Button::new(verb)).clicked();
    (ok && (clicked || enter)).then(|| expand_home(prompt.text.trim()))
}

/// What a path field holds once an absolute (`//`) or home (`/~`) path has been typed after
/// the folder it was pre-filled with, as GTK's file chooser reads it: the path typed last.
/// `None` when nothing restarts the path.
pub fn restarted(text: &str) -> Option<String> {
    let start = match (text.rfind("//"), text.rfind("/~")) {
        (Some(a), Some(b)) => a.max(b),
        (a, b) => a.or(b)?,
    };
    Some(text[start + 1..].to_string())
}

fn move_cursor_to_end(ui: &egui::Ui, id: egui::Id, text: &str) {
    if let Some(mut state) = egui::TextEdit::load_state(ui.ctx(), id) {
        let end = egui::text::CCursor::new(text.chars().count());
        state
            .cursor
            .set_char_range(Some(egui::text::CCursorRange::one(end)));
        state.store(ui.ctx(), id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_from_the_typed_folder_with_folders_marked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cat.png"), b"").unwrap();
        std::fs::write(dir.path().join("car.jpg"), b"").unwrap();
        std::fs::write(dir.path().join(".hidden"), b"").unwrap();
        std::fs::create_dir(dir.path().join("cars")).unwrap();
        let base = format!("{}/", dir.path().display());
        let got = completions(&format!("{base}ca"), 10);
        assert_eq!(
            got,
            [
                format!("{base}car.jpg"),
                format!("{base}cars/"),
                format!("{base}cat.png")
            ]
        );
        assert_eq!(common_prefix(&got).unwrap(), format!("{base}ca"));
        assert_eq!(completions(&format!("{base}ca"), 1).len(), 1);
        assert!(completions(&format!("{base}nothing/here"), 10).is_empty());
        let one = completions(&format!("{base}cat"), 10);
        assert_eq!(common_prefix(&one).unwrap(), format!("{base}cat.png"));
    }

    #[test]
    fn a_path_typed_over_the_prefilled_folder_starts_again() {
        assert_eq!(
            restarted("assets/samples//home/me/cat.png").as_deref(),
            Some("/home/me/cat.png")
        );
        assert_eq!(restarted("/data/x//y/~/z.png").as_deref(), Some("~/z.png"));
        assert_eq!(restarted("assets/samples/cat.png"), None);
        assert_eq!(restarted("/abs/cat.png"), None);
    }

    #[test]
    fn the_common_prefix_cuts_at_characters_not_bytes() {
        let v = vec!["añb".to_string(), "añc".to_string(), "aü".to_string()];
        assert_eq!(common_prefix(&v).unwrap(), "a");
        assert_eq!(common_prefix(&[]), None);
    }
}
