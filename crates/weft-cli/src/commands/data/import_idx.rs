//! `weft data import-idx`: MNIST-style IDX files to Parquet.

use std::path::PathBuf;

use clap::Args;

/// Arguments of `weft data import-idx`.
#[derive(Args, Debug)]
pub struct ImportIdxArgs {
    /// The `*-images-idx3-ubyte[.gz]` file.
    #[arg(long)]
    images: PathBuf,
    /// The `*-labels-idx1-ubyte[.gz]` file.
    #[arg(long)]
    labels: PathBuf,
    /// The Parquet file to write.
    #[arg(long)]
    out: PathBuf,
    /// Class names by label: `fashion-mnist`, `mnist`, or a comma-separated list.
    #[arg(long, default_value = "fashion-mnist")]
    classes: String,
    /// Import the first N images only.
    #[arg(long)]
    limit: Option<usize>,
    /// Rows per row group.
    #[arg(long, default_value_t = 1000)]
    row_group_size: usize,
}

/// Convert the files and say how many rows were written.
pub fn run(args: ImportIdxArgs) -> anyhow::Result<()> {
    let classes: Vec<String> = match args.classes.as_str() {
        "fashion-mnist" => weft_data::idx::FASHION_MNIST_CLASSES
            .map(String::from)
            .to_vec(),
        "mnist" => weft_data::idx::MNIST_CLASSES.map(String::from).to_vec(),
        list => list.split(',').map(|c| c.trim().to_string()).collect(),
    };
    let opts = weft_data::idx::ImportOptions {
        images: args.images,
        labels: args.labels,
        classes,
        limit: args.limit,
        row_group_size: args.row_group_size,
    };
    let n = weft_data::idx::import(&opts, &args.out)?;
    println!("wrote {} ({n} rows)", args.out.display());
    Ok(())
}
