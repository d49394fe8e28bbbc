//! `weft report`: one self-contained HTML page of a run directory, and its plots as PNG files.
//!
//! A run directory (written by `weft train`) holds `metrics.jsonl` (one line per optimizer
//! step), `eval.jsonl` (one line per evaluation), `config.toml` (the resolved config) and
//! `runs.jsonl` (one line per start of the run: version, backend, world size, host). The report
//! reads them ([`RunData::read`]), draws one chart per loss component, the learning rate, the
//! gradient norm, samples/s, step time, the data-wait fraction and the evaluation metrics with
//! [plotters](https://docs.rs/plotters) ([`charts`], [`render`]), and writes a page with the PNGs
//! embedded as `data:` URLs, the metric tables, the environment and the config ([`html`]). The
//! page needs no network; the PNGs are also written beside it.
//!
//! ```no_run
//! let written = weft_report::ReportBuilder::new("runs/tiny").build()?;
//! println!("{}", written.html.display());
//! # Ok::<(), weft_report::ReportError>(())
//! ```

#![warn(missing_docs)]

mod error;
pub mod html;
pub mod plot;
pub mod read;

use std::path::{Path, PathBuf};

pub use error::ReportError;
pub use plot::{charts, render, Chart, Series, SeriesStyle};
pub use read::RunData;

/// Default size of a plot, in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (800, 400);

/// Options of a report; [`ReportBuilder::build`] reads the run and writes the files.
#[derive(Debug, Clone)]
pub struct ReportBuilder {
    run_dir: PathBuf,
    out: Option<PathBuf>,
    plots_dir: Option<PathBuf>,
    size: (u32, u32),
}

/// What a report wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The HTML page.
    pub html: PathBuf,
    /// The PNG files, one per chart, in the page's order.
    pub pngs: Vec<PathBuf>,
    /// Every metric the page names: the training fields, then the evaluation fields.
    pub metrics: Vec<String>,
}

impl ReportBuilder {
    /// A report of `run_dir`, written to `run_dir/report.html` and `run_dir/report/*.png`.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        Self {
            run_dir: run_dir.into(),
            out: None,
            plots_dir: None,
            size: DEFAULT_SIZE,
        }
    }

    /// Where the HTML page goes (default `RUN_DIR/report.html`).
    pub fn out(mut self, path: impl Into<PathBuf>) -> Self {
        self.out = Some(path.into());
        self
    }

    /// Where the PNG files go (default: a folder named after the page, `report/` beside
    /// `report.html`).
    pub fn plots_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.plots_dir = Some(dir.into());
        self
    }

    /// Size of each plot in pixels (at least 200 x 150).
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    /// Read the run, render the charts, write the PNGs and the page.
    pub fn build(self) -> Result<Written, ReportError> {
        let (w, h) = self.size;
        if w < 200 || h < 150 || w > 10_000 || h > 10_000 {
            return Err(ReportError::Size {
                width: w,
                height: h,
            });
        }
        let data = RunData::read(&self.run_dir)?;
        let out = self.out.unwrap_or_else(|| self.run_dir.join("report.html"));
        let plots_dir = self.plots_dir.unwrap_or_else(|| default_plots_dir(&out));
        std::fs::create_dir_all(&plots_dir).map_err(error::io(&plots_dir))?;

        let charts = charts(&data);
        let mut pngs = Vec::with_capacity(charts.len());
        let mut figures = Vec::with_capacity(charts.len());
        for chart in &charts {
            let png = plot::png(chart, w, h)?;
            let path = plots_dir.join(format!("{}.png", chart.file));
            write_new(&path, &png)?;
            pngs.push(path);
            figures.push((chart, png));
        }
        let page = html::page(&data, &figures);
        write_new(&out, page.as_bytes())?;
        Ok(Written {
            html: out,
            pngs,
            metrics: data
                .train_keys()
                .chain(data.eval_keys())
                .map(str::to_string)
                .collect(),
        })
    }
}

/// `report.html` -> `report/`, `x/run.html` -> `x/run/`.
fn default_plots_dir(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "report".into(), |s| s.to_os_string());
    out.with_file_name(stem)
}

/// Write through a temporary file and rename, so that a failed write leaves the old file.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(error::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_go_beside_the_page() {
        assert_eq!(
            default_plots_dir(Path::new("runs/a/report.html")),
            Path::new("runs/a/report")
        );
        assert_eq!(default_plots_dir(Path::new("out.html")), Path::new("out"));
    }
}
