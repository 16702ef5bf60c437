//! Progress bars for long imports and generation (drawn only on a terminal).

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;
use tidepool_engine::import::Progress;

pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    label: String,
}

impl Bar {
    pub fn new(label: impl Into<String>) -> Self {
        Bar {
            bar: Mutex::new(None),
            label: label.into(),
        }
    }
}

impl Progress for Bar {
    fn stage(&self, name: &str, total: Option<u64>) {
        let mut slot = self.bar.lock().expect("progress lock");
        if let Some(old) = slot.take() {
            old.finish_and_clear();
        }
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{prefix} {msg:>11} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner(),
        };
        let bar = if name == "reading" {
            bar.with_style(
                ProgressStyle::with_template(
                    "{prefix} {msg:>11} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            )
        } else {
            bar
        };
        bar.set_prefix(self.label.clone());
        bar.set_message(name.to_string());
        *slot = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = self.bar.lock().expect("progress lock").as_ref() {
            bar.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }
}
