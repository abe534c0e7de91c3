//! The images `make images` builds without a Docker engine describe the same images as
//! `docker/*.Dockerfile`: the same user, entrypoint, exposed ports and binary, tagged as the
//! chart expects them.

use std::path::Path;
use std::process::Command;

use testenv::node;

/// What a Dockerfile says of its final image.
#[derive(Debug, PartialEq)]
struct Described {
    user: String,
    entrypoint: Vec<String>,
    exposed: Vec<String>,
    binary: String,
}

fn from_dockerfile(text: &str) -> Described {
    // The final stage only: everything after the last FROM.
    let final_stage = text.rsplit("\nFROM ").next().expect("a FROM line");
    let value = |instruction: &str| {
        final_stage
            .lines()
            .find_map(|l| l.strip_prefix(instruction))
            .unwrap_or_else(|| panic!("no {instruction}in the final stage"))
            .trim()
            .to_owned()
    };
    let entrypoint: Vec<String> =
        serde_json::from_str(&value("ENTRYPOINT ")).expect("ENTRYPOINT in exec form");
    let binary = value("COPY ")
        .split_whitespace()
        .last()
        .expect("COPY names a destination")
        .to_owned();
    let mut exposed: Vec<String> = value("EXPOSE ")
        .split_whitespace()
        .map(|p| format!("{p}/tcp"))
        .collect();
    exposed.sort();
    Described {
        user: value("USER "),
        entrypoint,
        exposed,
        binary,
    }
}

/// `tar -xOf archive member`.
fn member(archive: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(name)
        .output()
        .expect("tar runs");
    assert!(out.status.success(), "{name} in {}", archive.display());
    out.stdout
}

fn from_archive(archive: &Path, tag: &str) -> Described {
    let manifest: serde_json::Value =
        serde_json::from_slice(&member(archive, "manifest.json")).expect("manifest.json");
    let entry = &manifest[0];
    let tags: Vec<&str> = entry["RepoTags"]
        .as_array()
        .expect("RepoTags")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(tags.contains(&tag), "{tags:?} should name {tag}");
    let config: serde_json::Value = serde_json::from_slice(&member(
        archive,
        entry["Config"].as_str().expect("a config"),
    ))
    .expect("the image config");
    let config = &config["config"];
    let entrypoint: Vec<String> =
        serde_json::from_value(config["Entrypoint"].clone()).expect("an entrypoint");
    let mut exposed: Vec<String> = config["ExposedPorts"]
        .as_object()
        .map(|ports| ports.keys().cloned().collect())
        .unwrap_or_default();
    exposed.sort();
    // The binary the entrypoint runs is in a layer, executable.
    let binary = entrypoint[0].clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut found = false;
    for layer in entry["Layers"].as_array().expect("layers") {
        let layer_file = dir.path().join("layer");
        std::fs::write(
            &layer_file,
            member(archive, layer.as_str().expect("a layer")),
        )
        .expect("writing the layer");
        let listing = Command::new("tar")
            .arg("-tvf")
            .arg(&layer_file)
            .output()
            .expect("tar lists the layer");
        let listing = String::from_utf8_lossy(&listing.stdout);
        found |= listing
            .lines()
            .any(|l| l.starts_with("-rwx") && l.ends_with(binary.trim_start_matches('/')));
    }
    assert!(
        found,
        "{binary} is an executable file of {}",
        archive.display()
    );
    Described {
        user: config["User"].as_str().unwrap_or_default().to_owned(),
        entrypoint,
        exposed,
        binary,
    }
}

#[test]
fn the_built_images_agree_with_the_dockerfiles() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in ["controller", "worker"] {
        let dockerfile = std::fs::read_to_string(repo.join(format!("docker/{name}.Dockerfile")))
            .expect("the Dockerfile");
        let archive = node::images_dir().join(format!("{name}.tar"));
        assert!(
            archive.is_file(),
            "{} is missing: run `make images` (make test does)",
            archive.display()
        );
        let described = from_dockerfile(&dockerfile);
        let built = from_archive(&archive, &node::product_image(name));
        assert_eq!(
            built, described,
            "the {name} image and its Dockerfile differ"
        );
        assert_ne!(built.user.split(':').next(), Some("0"), "runs as non-root");
    }
}
