//! Config files: the example documents every key with its default; valid files load; invalid
//! ones name the key and the problem.

use rapid_chat::config::{Config, CtxSize};

fn dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs")
        .join(name)
}

#[test]
fn the_example_config_documents_every_key_with_its_default() {
    let text = std::fs::read_to_string(dir("../../config.example.toml")).unwrap();
    assert_eq!(Config::parse(&text).unwrap(), Config::default());
    let defaults = toml::to_string(&Config::default()).unwrap();
    for line in defaults.lines().filter(|l| l.contains(" = ")) {
        let key = line.split(" = ").next().unwrap();
        assert!(
            text.contains(&format!("\n{key} = ")),
            "config.example.toml lacks {key}"
        );
    }
    for optional in ["model", "draft_model"] {
        assert!(
            text.contains(&format!("# {optional} = ")),
            "config.example.toml lacks {optional}"
        );
    }
}

#[test]
fn valid_configs_load() {
    for entry in std::fs::read_dir(dir("valid")).unwrap() {
        let path = entry.unwrap().path();
        Config::load(Some(&path), &dir("none"))
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
    let c = Config::load(Some(&dir("valid/models.toml")), &dir("none")).unwrap();
    assert_eq!(c.corpus.chunk_tokens, 256);
    assert!(c.text_extensions().contains(&"rst".to_string()));
    let c = Config::load(Some(&dir("valid/sizes.toml")), &dir("none")).unwrap();
    assert_eq!(c.engine.ctx, CtxSize::Tokens(4096));
    assert_eq!(c.engine.draft_ctx, CtxSize::Auto);
}

#[test]
fn a_context_size_is_a_number_or_auto_everywhere() {
    let mut e = rapid_chat::config::EngineConfig::default();
    assert_eq!((e.ctx, e.draft_ctx), (CtxSize::Auto, CtxSize::Auto));
    e.set("ctx", "4096").unwrap();
    assert_eq!(e.ctx, CtxSize::Tokens(4096));
    e.set("ctx", "AUTO").unwrap();
    assert_eq!(e.ctx, CtxSize::Auto);
    let err = e.set("ctx", "lots").unwrap_err().to_string();
    assert!(err.contains("auto"), "{err}");
    assert!(e.set("draft_ctx", "10").is_err());
    assert_eq!(e.ctx.to_string(), "auto");
    assert_eq!(CtxSize::Tokens(512).to_string(), "512");
}

#[test]
fn invalid_configs_name_the_key_and_the_problem() {
    let expect = [
        ("unknown-key.toml", "gama"),
        ("wrong-type.toml", "temp"),
        ("bad-mode.toml", "engine.mode"),
        ("tiny-chunks.toml", "corpus.chunk_tokens"),
        ("syntax.toml", "line 1"),
        ("bad-ctx.toml", "engine.ctx"),
        ("small-ctx.toml", "ctx must be auto or at least 256"),
        (
            "odd-shapes.toml",
            "verify_shapes must be 0 (off) or a power of two",
        ),
        ("two-shapes.toml", "not both"),
        ("bad-rpc.toml", "gpu.rpc"),
    ];
    for (file, needle) in expect {
        let err = Config::load(Some(&dir("invalid").join(file)), &dir("none")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(needle), "{file}: {msg}");
        assert!(
            msg.contains(file),
            "{file}: the message names the file: {msg}"
        );
    }
}

#[test]
fn a_missing_default_config_means_defaults_but_a_missing_given_one_is_an_error() {
    assert_eq!(Config::load(None, &dir("none")).unwrap(), Config::default());
    assert!(Config::load(Some(&dir("nope.toml")), &dir("none")).is_err());
}

#[test]
fn worker_addresses_are_what_ggml_rpc_parses() {
    for ok in ["127.0.0.1:50052", "gpu-box:1", "10.0.0.2:65535"] {
        assert!(rapid_chat::config::valid_endpoint(ok), "{ok}");
    }
    for bad in [
        "gpu-box",
        ":50052",
        "[::1]:50052",
        "host:0",
        "host:port",
        "h:70000",
    ] {
        assert!(!rapid_chat::config::valid_endpoint(bad), "{bad}");
    }
}
