//! `slb plot`: a run's per-epoch curves (`metrics.jsonl`) drawn as one PNG with four panels:
//! top-1 accuracy (training and test), training loss, temperature and learning rate.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

use crate::train::EpochMetrics;

/// Arguments of `slb plot`.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// A run folder (its `metrics.jsonl`) or a metrics file.
    pub run: PathBuf,
    /// PNG to write (default: `curves.png` beside the metrics file).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Title above the panels (default: the run folder's name).
    #[arg(long)]
    pub title: Option<String>,
}

/// Reads a `metrics.jsonl`: one [`EpochMetrics`] per line. A resumed run may repeat an epoch
/// (the line of an epoch whose checkpoint was lost): the last line of an epoch wins.
pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out: Vec<EpochMetrics> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let m: EpochMetrics = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not an epoch record", path.display(), i + 1))?;
        out.retain(|e| e.epoch != m.epoch);
        out.push(m);
    }
    out.sort_by_key(|m| m.epoch);
    if out.is_empty() {
        bail!("{}: no epochs to plot", path.display());
    }
    Ok(out)
}

/// One panel's series: name, points (epoch, value), colour.
type Series = (&'static str, Vec<(f64, f64)>, RGBColor);

/// The four panels' series (title, log-scale y, series) from the epoch records.
pub fn panels(m: &[EpochMetrics]) -> Vec<(&'static str, bool, Vec<Series>)> {
    let pts = |f: &dyn Fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        m.iter()
            .map(|e| (e.epoch as f64, f(e)))
            .filter(|p| p.1.is_finite())
            .collect()
    };
    vec![
        (
            "top-1 accuracy (%)",
            false,
            vec![
                ("train (augmented)", pts(&|e| 100.0 * e.train_top1), BLUE),
                ("test (argmax weights)", pts(&|e| 100.0 * e.test_top1), RED),
            ],
        ),
        (
            "training loss",
            false,
            vec![("loss", pts(&|e| e.train_loss), BLACK)],
        ),
        (
            "temperature (log)",
            true,
            vec![("T", pts(&|e| e.temperature), MAGENTA)],
        ),
        ("learning rate", false, vec![("lr", pts(&|e| e.lr), GREEN)]),
    ]
}

fn range(series: &[Series], log: bool) -> (f64, f64) {
    let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if log {
        let lo = lo.max(1e-6);
        (lo / 1.5, hi.max(lo) * 1.5)
    } else {
        let pad = ((hi - lo) * 0.05).max(1e-9);
        (lo - pad, hi + pad)
    }
}

/// Registers a system sans-serif font (found by fontdb, read once) as plotters' "sans-serif".
fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let mut db = fontdb::Database::new();
        db.load_system_fonts();
        let query = fontdb::Query {
            families: &[fontdb::Family::SansSerif],
            ..Default::default()
        };
        let id = db.query(&query).or_else(|| db.faces().next().map(|f| f.id));
        let bytes = id
            .and_then(|id| db.with_face_data(id, |data, _| data.to_vec()))
            .ok_or(
                "no TrueType/OpenType font found on this system for the labels \
                    (Debian: apt-get install fonts-dejavu-core)",
            )?;
        // Registered once for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the system font found could not be read".to_string())
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// Draws the curves of `m` into a `width` x `height` PNG at `out`.
pub fn draw(m: &[EpochMetrics], title: &str, out: &Path, width: u32, height: u32) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", out.display());
    register_font()?;
    let root = BitMapBackend::new(out, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 24))
        .map_err(|e| err(&e))?;
    let last = m.last().map_or(1, |e| e.epoch) as f64;
    let first = m.first().map_or(0, |e| e.epoch) as f64;
    let x = first.min(last - 1.0)..last;
    for (area, (name, log, series)) in root.split_evenly((2, 2)).iter().zip(panels(m)) {
        let (lo, hi) = range(&series, log);
        let mut b = ChartBuilder::on(area);
        b.caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(56);
        // One drawing routine for both y scales.
        macro_rules! body {
            ($chart:expr) => {{
                let mut c = $chart.map_err(|e| err(&e))?;
                c.configure_mesh()
                    .light_line_style(WHITE)
                    .x_desc("epoch")
                    .draw()
                    .map_err(|e| err(&e))?;
                for (label, pts, colour) in series {
                    c.draw_series(LineSeries::new(pts, colour.stroke_width(2)))
                        .map_err(|e| err(&e))?
                        .label(label)
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                        });
                }
                c.configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::MiddleRight)
                    .draw()
                    .map_err(|e| err(&e))?;
            }};
        }
        if log {
            body!(b.build_cartesian_2d(x.clone(), (lo..hi).log_scale()));
        } else {
            body!(b.build_cartesian_2d(x.clone(), lo..hi));
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Runs `slb plot`.
pub fn main(a: &PlotArgs) -> Result<()> {
    let metrics = if a.run.is_dir() {
        a.run.join("metrics.jsonl")
    } else {
        a.run.clone()
    };
    let m = read_metrics(&metrics)?;
    let out = a.out.clone().unwrap_or_else(|| {
        metrics
            .parent()
            .unwrap_or(Path::new("."))
            .join("curves.png")
    });
    let title = a.title.clone().unwrap_or_else(|| {
        metrics
            .parent()
            .and_then(|p| p.file_name())
            .map_or("run".into(), |n| n.to_string_lossy().into_owned())
    });
    draw(&m, &title, &out, 1200, 800)?;
    eprintln!("wrote {} ({} epochs)", out.display(), m.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(epoch: i64, t: f64, top1: f64) -> String {
        format!(
            "{{\"epoch\":{epoch},\"temperature\":{t},\"hard\":false,\"lr\":0.1,\"train_loss\":1.5,\
             \"train_top1\":0.5,\"test_top1\":{top1},\"test_top5\":0.9,\"images_per_s\":1000.0,\
             \"train_seconds\":1.0,\"bn_calibrated\":false}}"
        )
    }

    #[test]
    fn metrics_keep_the_last_line_of_a_repeated_epoch_and_refuse_garbage() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.jsonl");
        let text = [line(1, 1.0, 0.1), line(2, 1.2, 0.2), line(2, 1.2, 0.3)].join("\n");
        std::fs::write(&p, text).unwrap();
        let m = read_metrics(&p).unwrap();
        assert_eq!(m.iter().map(|e| e.epoch).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(m[1].test_top1, 0.3);
        let acc = &panels(&m)[0].2[1].1;
        assert_eq!(acc, &[(1.0, 10.0), (2.0, 30.0)]);
        std::fs::write(&p, "{\"epoch\": 1}\n").unwrap();
        let e = read_metrics(&p).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_metrics(&p)
            .unwrap_err()
            .to_string()
            .contains("no epochs"));
    }

    #[test]
    fn draws_a_png_with_the_curves() {
        let d = tempfile::tempdir().unwrap();
        let m: Vec<EpochMetrics> = (1..=12)
            .map(|e| {
                serde_json::from_str(&line(e, 1.2f64.powi(e as i32), 0.05 * e as f64)).unwrap()
            })
            .collect();
        let out = d.path().join("c.png");
        draw(&m, "test run", &out, 600, 400).unwrap();
        let img = image::open(&out).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (600, 400));
        // The red test-accuracy curve is there, and so is dark text or axes.
        let red = img
            .pixels()
            .filter(|p| p[0] > 200 && p[1] < 60 && p[2] < 60)
            .count();
        let dark = img
            .pixels()
            .filter(|p| p[0] < 60 && p[1] < 60 && p[2] < 60)
            .count();
        assert!(red > 100, "{red} red pixels");
        assert!(dark > 500, "{dark} dark pixels");
    }
}
