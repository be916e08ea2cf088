//! What the explorer computes from a loaded model: observers that keep or time layer outputs,
//! per-layer profiles, attribution and effective receptive fields, runs over image folders
//! (evaluation, top images, neural collapse), statistics, feature-map grids and colour maps.
pub mod attribution;
pub mod cka;
pub mod collapse;
pub mod colormap;
pub mod diff;
pub mod evaluation;
pub mod faithfulness;
pub mod feature_vis;
pub mod folder_run;
pub mod grid;
pub mod profile;
pub mod roofline;
pub mod sanity;
pub mod stats;
pub mod top_images;
pub mod trace;
