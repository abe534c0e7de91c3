//! Writes the CRD YAML from the Rust types into `crds/` (and the chart), or with `--check`
//! fails when the checked-in files differ from what the types produce.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root");
    let mut dirs = vec![root.join("crds")];
    if root.join("charts/pubsubkafka").is_dir() {
        dirs.push(root.join("charts/pubsubkafka/crds"));
    }
    let mut stale = Vec::new();
    for crd in pubsubkafka_controller::crd::all() {
        let file = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"));
        let text = pubsubkafka_controller::crd::to_yaml(&crd);
        for dir in &dirs {
            let path = dir.join(&file);
            if check {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                    stale.push(path.display().to_string());
                }
            } else {
                std::fs::create_dir_all(dir).expect("creating the CRD dir");
                std::fs::write(&path, &text).expect("writing a CRD");
                println!("wrote {}", path.display());
            }
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "stale generated CRDs (run `make crds` and commit the result):\n  {}",
            stale.join("\n  ")
        );
        ExitCode::FAILURE
    }
}
