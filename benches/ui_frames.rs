//! `cargo bench --bench ui_frames`: the UI thread's CPU time per frame, tab by tab, with
//! ConvNeXt-T loaded (its 200-odd-row layer tables on show), idle and while a profile run keeps
//! the inference worker busy.
//!
//! A frame here is what the UI thread does for one frame of the real app, less the GPU upload
//! and draw: the whole `ExplorerApp` UI pass (layout, the worker's replies, textures) plus
//! tessellation. It is the thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`), so time the
//! scheduler gives to other threads does not count; the wall time is reported beside it.
//! Rounds are interleaved (every tab once per round) and each tab's figure is the median of the
//! per-round medians, with their range. `BENCH_ROUNDS` (default 5) and `BENCH_FRAMES` (default
//! 30 per tab per round) to choose.
#[cfg(feature = "app")]
fn main() {
    frames::main();
}

#[cfg(not(feature = "app"))]
fn main() {
    eprintln!("ui_frames needs the `app` feature");
}

#[cfg(feature = "app")]
mod frames {
    use convnext_explorer::analysis::stats::median;
    use convnext_explorer::app::{
        default_worker_threads, tab_names, ExplorerApp, ProfileTab, Request, Settings, StartOptions,
    };
    use convnext_explorer::io::engine::ModelSpec;
    use egui_kittest::kittest::Queryable;
    use egui_kittest::Harness;
    use std::time::{Duration, Instant};

    type App = Harness<'static, ExplorerApp>;

    fn env(name: &str, default: usize) -> usize {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }

    /// CPU time this thread has used.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always
        // supported on Linux, and on failure `ts` stays zero (reported as 0 ms, not UB).
        unsafe {
            libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        }
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// One frame as the app's UI thread does it: the UI pass, then tessellation.
    fn frame(h: &mut App) -> (f64, f64) {
        let (cpu, wall) = (thread_cpu(), Instant::now());
        h.step();
        let shapes = h.output().shapes.clone();
        let ppp = h.output().pixels_per_point;
        let prims = h.ctx.tessellate(shapes, ppp);
        std::hint::black_box(prims);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        (ms(thread_cpu() - cpu), ms(wall.elapsed()))
    }

    fn settle(h: &mut App) {
        let start = Instant::now();
        loop {
            h.step();
            let s = h.state().shared();
            if !s.busy() && s.weights.is_some() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(600), "did not settle");
            std::thread::sleep(Duration::from_millis(5));
        }
        h.run_steps(3);
    }

    /// ConvNeXt-T with every tab's content computed once: a profile, an attribution, the
    /// receptive fields and the roadmap's timings are what a user would have on show.
    fn loaded() -> App {
        let settings = Settings {
            model: Some(ModelSpec::Variant {
                name: "convnext_tiny".into(),
                classes: 1000,
                seed: 0,
            }),
            show_containers: true,
            profile_runs: 2,
            ..Default::default()
        };
        let image =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/chelsea.png");
        let start = StartOptions {
            image: Some(image),
            ..Default::default()
        };
        let mut h = Harness::builder()
            .with_size([1400.0, 900.0])
            .build_eframe(move |cc| ExplorerApp::new(&cc.egui_ctx, settings, start).unwrap());
        settle(&mut h);
        // A profile, an attribution (computed when its tab first shows) and the receptive
        // fields, so that every tab has its results to draw.
        run_profile(&mut h);
        settle(&mut h);
        h.state_mut().shared_mut().settings.tab = "Attribution".into();
        h.run_steps(2);
        settle(&mut h);
        h.state_mut().shared_mut().settings.tab = "Receptive field".into();
        h.run_steps(2);
        h.get_by_label("Compute").click();
        h.step();
        settle(&mut h);
        h
    }

    fn run_profile(h: &mut App) {
        h.state_mut()
            .with_tab(|t: &mut ProfileTab, ctx| t.run(ctx))
            .expect("a Profile tab");
    }

    struct Row {
        tab: &'static str,
        /// Per round: the first frame after switching to the tab, and the median of the rest.
        switch: Vec<f64>,
        cpu: Vec<f64>,
        wall: Vec<f64>,
        /// Per round: the wall time of drawing one frame with wgpu (on this machine's adapter;
        /// a software one where there is no GPU), read-back included.
        render: Vec<f64>,
    }

    /// Every tab once, `frames` frames each: appends one round's figures to `rows`.
    fn round(h: &mut App, rows: &mut [Row], frames: usize) {
        for row in rows.iter_mut() {
            h.state_mut().shared_mut().settings.tab = row.tab.into();
            row.switch.push(frame(h).0);
            let (cpu, wall): (Vec<f64>, Vec<f64>) = (0..frames).map(|_| frame(h)).unzip();
            row.cpu.push(median(&cpu));
            row.wall.push(median(&wall));
            let t = Instant::now();
            h.render().expect("render");
            row.render.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }

    fn spread(v: &[f64]) -> String {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        format!("{:.2} ({lo:.2}–{hi:.2})", median(v))
    }

    fn report(title: &str, rows: &[Row]) {
        println!("\n{title}\n");
        println!("| tab | UI CPU ms/frame | wall ms/frame | first frame after switching (CPU ms) | wgpu draw + read-back (ms) |");
        println!("| --- | --- | --- | --- | --- |");
        for r in rows {
            println!(
                "| {} | {} | {} | {} | {} |",
                r.tab,
                spread(&r.cpu),
                spread(&r.wall),
                spread(&r.switch),
                spread(&r.render)
            );
        }
    }

    fn fresh_rows() -> Vec<Row> {
        tab_names()
            .into_iter()
            .map(|tab| Row {
                tab,
                switch: vec![],
                cpu: vec![],
                wall: vec![],
                render: vec![],
            })
            .collect()
    }

    pub fn main() {
        let rounds = env("BENCH_ROUNDS", 5).max(1);
        let frames = env("BENCH_FRAMES", 30).max(1);
        // As the app does: inference leaves the UI thread a core.
        let threads = default_worker_threads();
        convnext_explorer::base::device::set_threads(threads).expect("threads");
        let mut h = loaded();
        let layers = h.state().shared().model.as_ref().unwrap().layers.len();
        println!(
            "ConvNeXt-T (random weights), {layers} layers, 1400×900 window, {rounds} rounds × {frames} frames per tab, inference on {threads} thread(s)"
        );
        let mut idle = fresh_rows();
        for _ in 0..rounds {
            round(&mut h, &mut idle, frames);
        }
        report("Idle", &idle);
        // The same while the worker profiles (30 runs of ConvNeXt-T, restarted as needed).
        h.state_mut().shared_mut().settings.profile_runs = 30;
        let mut busy = fresh_rows();
        for _ in 0..rounds {
            if !h.state().shared().busy() {
                run_profile(&mut h);
            }
            round(&mut h, &mut busy, frames);
        }
        let job = h.state().shared().status.job.clone();
        report(
            "During a profile run (30 × ConvNeXt-T on the worker)",
            &busy,
        );
        match job {
            Some(j) => println!(
                "\n(the profile was at run {}/{} when the rounds ended)",
                j.done, j.total
            ),
            None => println!("\n(the profile had finished before the rounds ended)"),
        }
        h.state_mut().request(Request::CancelJob);
        settle(&mut h);
    }
}
