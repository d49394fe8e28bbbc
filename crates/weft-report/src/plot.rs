//! The charts of a report and their drawing with plotters (bitmap backend, DejaVu Sans).

use std::fmt::Display;
use std::sync::OnceLock;

use image::{ExtendedColorType, ImageEncoder};
use plotters::prelude::*;

use crate::error::ReportError;
use crate::read::{natural_key, Points, RunData};

/// DejaVu Sans (Bitstream Vera licence, `fonts/DejaVuSans-LICENSE`): the plots' text, so that a
/// report draws the same on a machine without fonts.
const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// At most this many points of a series are drawn (every k-th, and the last).
pub const MAX_POINTS: usize = 2000;

/// Weight of the exponential moving average drawn over a loss (TensorBoard's smoothing, with
/// its bias correction).
pub const EMA_WEIGHT: f64 = 0.9;

/// Fields of `eval.jsonl` in its table but not plotted (the size of the evaluation set).
pub const NOT_PLOTTED: [&str; 1] = ["n"];

/// Colours of the series: matplotlib's `tab10`, which stays readable on white.
const TAB10: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesStyle {
    /// A line.
    Line,
    /// A faint line (the raw values under their moving average).
    Raw,
    /// A line with a marker at each point (evaluations, which are few).
    Points,
}

/// One named series of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (step, value).
    pub points: Points,
    /// How it is drawn.
    pub style: SeriesStyle,
}

/// One plot: a PNG file and a figure of the page.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// File name without `.png`, also the figure's anchor.
    pub file: String,
    /// Title drawn on the plot.
    pub title: String,
    /// Label of the y axis.
    pub y_label: String,
    /// The series; a single-series chart has no legend.
    pub series: Vec<Series>,
    /// Colour of the first series (a palette index), so that a lone series is not always blue.
    pub color: usize,
}

/// The charts of a run, in the page's order: each loss (raw and smoothed), learning rate,
/// gradient norm, samples/s, step time, data-wait fraction, then the evaluation metrics
/// (retrieval recalls together, ranks together, any other metric alone).
pub fn charts(data: &RunData) -> Vec<Chart> {
    let mut out = Vec::new();
    for (i, key) in data.losses.iter().enumerate() {
        let points = &data.train[key];
        let mut series = Vec::new();
        if points.len() >= 20 {
            series.push(Series {
                name: key.clone(),
                points: points.clone(),
                style: SeriesStyle::Raw,
            });
            series.push(Series {
                name: format!("{key} (EMA {EMA_WEIGHT})"),
                points: ema(points, EMA_WEIGHT),
                style: SeriesStyle::Line,
            });
        } else {
            series.push(Series {
                name: key.clone(),
                points: points.clone(),
                style: SeriesStyle::Line,
            });
        }
        let title = if key == "loss" {
            "loss (weighted total)".to_string()
        } else {
            format!("{key} loss (unweighted)")
        };
        out.push(Chart {
            file: format!("train_{}", file_name(key)),
            title,
            y_label: "loss".into(),
            series,
            color: i,
        });
    }
    let singles = [
        ("lr", "learning rate", "lr"),
        ("grad_norm", "gradient norm (before clipping)", "norm"),
        ("samples_per_s", "throughput", "samples/s"),
        ("step_time_s", "step time", "seconds"),
        (
            "data_wait_fraction",
            "data-wait fraction of the step",
            "fraction",
        ),
    ];
    for (i, (key, title, y_label)) in singles.into_iter().enumerate() {
        if let Some(points) = data.train.get(key) {
            out.push(Chart {
                file: format!("train_{key}"),
                title: title.into(),
                y_label: y_label.into(),
                series: vec![Series {
                    name: key.into(),
                    points: points.clone(),
                    style: SeriesStyle::Line,
                }],
                color: data.losses.len() + i,
            });
        }
    }

    let is_recall = |k: &str| {
        k.rsplit_once("_r")
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let is_rank = |k: &str| k.contains("rank");
    let group = |pick: &dyn Fn(&str) -> bool| -> Vec<Series> {
        let mut keys: Vec<&String> = data
            .eval
            .keys()
            .filter(|k| pick(k) && !NOT_PLOTTED.contains(&k.as_str()))
            .collect();
        keys.sort_by_key(|k| natural_key(k));
        keys.into_iter()
            .map(|k| Series {
                name: k.clone(),
                points: data.eval[k].clone(),
                style: SeriesStyle::Points,
            })
            .collect()
    };
    let recalls = group(&is_recall);
    if !recalls.is_empty() {
        out.push(Chart {
            file: "eval_recall".into(),
            title: "retrieval Recall@K (i2t: image->text, t2i: text->image)".into(),
            y_label: "recall (%)".into(),
            series: recalls,
            color: 0,
        });
    }
    let ranks = group(&is_rank);
    if !ranks.is_empty() {
        out.push(Chart {
            file: "eval_rank".into(),
            title: "retrieval rank of the true match (1 is best)".into(),
            y_label: "rank".into(),
            series: ranks,
            color: 0,
        });
    }
    for (i, s) in group(&|k| !is_recall(k) && !is_rank(k))
        .into_iter()
        .enumerate()
    {
        out.push(Chart {
            file: format!("eval_{}", file_name(&s.name)),
            title: format!("evaluation: {}", s.name),
            y_label: s.name.clone(),
            series: vec![s],
            color: i,
        });
    }
    out
}

/// Exponential moving average with bias correction (so that it starts at the first value).
pub fn ema(points: &[(f64, f64)], weight: f64) -> Points {
    let mut acc = 0.0;
    let mut norm = 0.0;
    points
        .iter()
        .map(|&(x, y)| {
            acc = weight * acc + (1.0 - weight) * y;
            norm = weight * norm + (1.0 - weight);
            (x, acc / norm)
        })
        .collect()
}

/// Every k-th point and the last, at most `max`.
fn thin(points: &[(f64, f64)], max: usize) -> Points {
    if points.len() <= max {
        return points.to_vec();
    }
    let stride = points.len().div_ceil(max - 1);
    let mut out: Points = points.iter().copied().step_by(stride).collect();
    if out.last() != points.last() {
        out.push(*points.last().unwrap());
    }
    out
}

fn file_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A tick label: short, exponent form for very small or large values.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

/// `lo..hi` with a margin, and a non-empty range for a constant series.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = (hi.abs() * 0.05).max(1e-6);
        return (lo - pad, hi + pad);
    }
    (lo - span * 0.05, hi + span * 0.05)
}

fn font_registered() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    })
}

/// Draw `chart` into an RGB buffer of `width` x `height` pixels.
pub fn render(chart: &Chart, width: u32, height: u32) -> Result<Vec<u8>, ReportError> {
    let fail = |e: &dyn Display| ReportError::Plot {
        chart: chart.file.clone(),
        message: e.to_string(),
    };
    if !font_registered() {
        return Err(fail(&"the embedded DejaVu Sans font did not load"));
    }
    let series: Vec<(Points, &Series)> = chart
        .series
        .iter()
        .map(|s| (thin(&s.points, MAX_POINTS), s))
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for (x, y) in series.iter().flat_map(|(p, _)| p.iter().copied()) {
        if y.is_finite() {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
    }
    if x0 == x1 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let (x0, x1) = if x0.is_finite() { (x0, x1) } else { (0.0, 1.0) };
    let (y0, y1) = padded(y0, y1);

    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut plot = ChartBuilder::on(&root)
            .caption(&chart.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| fail(&e))?;
        plot.configure_mesh()
            .x_desc("step")
            .y_desc(chart.y_label.as_str())
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .x_labels(8)
            .y_labels(7)
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| fail(&e))?;
        let mut color_index = chart.color;
        for (i, (points, s)) in series.iter().enumerate() {
            // A raw series and its moving average share a colour.
            if i > 0 && series[i - 1].1.style != SeriesStyle::Raw {
                color_index += 1;
            }
            let color = TAB10[color_index % TAB10.len()].to_rgba();
            let finite: Points = points.iter().copied().filter(|p| p.1.is_finite()).collect();
            let (line, legend) = match s.style {
                SeriesStyle::Raw => (color.mix(0.3).stroke_width(1), color.mix(0.3)),
                SeriesStyle::Line | SeriesStyle::Points => (color.stroke_width(2), color),
            };
            plot.draw_series(LineSeries::new(finite.iter().copied(), line))
                .map_err(|e| fail(&e))?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], legend.stroke_width(2))
                });
            if s.style == SeriesStyle::Points {
                plot.draw_series(finite.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| fail(&e))?;
            }
        }
        if series.len() > 1 {
            plot.configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.7))
                .border_style(BLACK.mix(0.4))
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(|e| fail(&e))?;
        }
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(buf)
}

/// Draw `chart` as PNG bytes.
pub fn png(chart: &Chart, width: u32, height: u32) -> Result<Vec<u8>, ReportError> {
    let rgb = render(chart, width, height)?;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&rgb, width, height, ExtendedColorType::Rgb8)
        .map_err(|e| ReportError::Plot {
            chart: chart.file.clone(),
            message: format!("PNG encoding: {e}"),
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_starts_at_the_first_value_and_follows_a_step() {
        let e = ema(&[(1.0, 2.0), (2.0, 2.0), (3.0, 4.0)], 0.5);
        assert_eq!(e[0], (1.0, 2.0));
        assert_eq!(e[1], (2.0, 2.0));
        // acc = 0.5*(0.5*(0.5*2)+0.5*2)... by hand: acc3 = 0.25*... ; norm3 = 0.875.
        // acc1 = 1, acc2 = 1.5, acc3 = 0.75 + 2 = 2.75 -> 2.75 / 0.875.
        assert!((e[2].1 - 2.75 / 0.875).abs() < 1e-12);
    }

    #[test]
    fn thinning_keeps_the_ends_and_the_bound() {
        let pts: Points = (0..10_001).map(|i| (i as f64, i as f64)).collect();
        let t = thin(&pts, 2000);
        assert!(t.len() <= 2000, "{}", t.len());
        assert_eq!(t[0], (0.0, 0.0));
        assert_eq!(*t.last().unwrap(), (10_000.0, 10_000.0));
        assert_eq!(thin(&pts[..5], 2000).len(), 5);
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(12.0), "12");
        assert_eq!(tick(4e-5), "4.0e-5");
        assert_eq!(tick(1.23456), "1.2346");
    }

    #[test]
    fn a_chart_draws_text_and_lines() {
        let chart = Chart {
            file: "t".into(),
            title: "a title".into(),
            y_label: "loss".into(),
            series: vec![Series {
                name: "loss".into(),
                points: vec![(1.0, 3.0), (2.0, 2.0), (3.0, 2.5)],
                style: SeriesStyle::Line,
            }],
            color: 0,
        };
        let rgb = render(&chart, 400, 200).unwrap();
        assert_eq!(rgb.len(), 400 * 200 * 3);
        let ink = rgb.chunks(3).filter(|p| p != &[255, 255, 255]).count();
        // Axes, ticks, text and the line: a few percent of the pixels, not none, not all.
        assert!(ink > 400 && ink < 400 * 200 / 2, "{ink} drawn pixels");
        let png = png(&chart, 400, 200).unwrap();
        let back = image::load_from_memory(&png).unwrap();
        assert_eq!((back.width(), back.height()), (400, 200));
        assert_eq!(back.to_rgb8().into_raw(), rgb);
    }

    #[test]
    fn chart_order_and_eval_groups() {
        let mut data = RunData::default();
        for k in ["loss", "itc", "lr", "grad_norm"] {
            data.train.insert(k.into(), vec![(1.0, 1.0)]);
        }
        data.losses = vec!["loss".into(), "itc".into()];
        for k in [
            "i2t_r1",
            "i2t_r10",
            "i2t_r5",
            "i2t_mean_rank",
            "accuracy",
            "n",
        ] {
            data.eval.insert(k.into(), vec![(5.0, 0.5)]);
        }
        let charts = charts(&data);
        let recall: Vec<&str> = charts[4].series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(recall, ["i2t_r1", "i2t_r5", "i2t_r10"]);
        let files: Vec<String> = charts.into_iter().map(|c| c.file).collect();
        assert_eq!(
            files,
            [
                "train_loss",
                "train_itc",
                "train_lr",
                "train_grad_norm",
                "eval_recall",
                "eval_rank",
                "eval_accuracy"
            ]
        );
    }
}
