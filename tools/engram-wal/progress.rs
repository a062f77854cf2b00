//! Progress bars on a terminal; nothing when output goes elsewhere.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub fn segments_bar(segments: usize, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() || segments < 2 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(segments as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} segments ({eta})")
            .expect("static template"),
    );
    bar.set_message(what.to_owned());
    bar
}
