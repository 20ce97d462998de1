//! Unit tests of settings resolution and validation.

use super::*;

fn with_upstream(url: &str) -> Layer {
    Layer {
        upstream: Some(url.parse().unwrap()),
        ..Layer::default()
    }
}

#[test]
fn upstream_alone_is_enough() {
    let s = Settings::resolve(with_upstream("https://ghes.example.com/api/v3/")).unwrap();
    assert_eq!(s.api_base_path(), "/api/v3");
    assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(s.data_dir, PathBuf::from("./data"));
}

#[test]
fn missing_upstream_names_the_key() {
    let e = Settings::resolve(Layer::default()).unwrap_err();
    assert!(e.to_string().contains("`upstream`"), "{e}");
}

#[test]
fn bad_urls_are_refused() {
    for (url, why) in [
        ("ftp://ghes/api/v3", "http or https"),
        ("https://user:pw@ghes/api/v3", "credentials"),
        ("https://ghes/api/v3?x=1", "query"),
    ] {
        let e = Settings::resolve(with_upstream(url))
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{url}: {e}");
    }
}

#[test]
fn higher_layer_wins_field_by_field() {
    let file = Layer {
        listen: Some("127.0.0.1:1".parse().unwrap()),
        data_dir: Some("/file".into()),
        ..with_upstream("http://a/api/v3")
    };
    let flags = Layer {
        listen: Some("127.0.0.1:2".parse().unwrap()),
        ..Layer::default()
    };
    let s = Settings::resolve(flags.over(file)).unwrap();
    assert_eq!(s.listen.port(), 2);
    assert_eq!(s.data_dir, PathBuf::from("/file"));
}

#[test]
fn unknown_and_mistyped_keys_name_the_key() {
    let e = toml::from_str::<Layer>("listn = \"x\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("listn"), "{e}");
    let e = toml::from_str::<Layer>("connect_timeout = \"soon\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("connect_timeout"), "{e}");
}

/// The shipped file documents the defaults; it must not drift from them.
#[test]
fn shipped_file_holds_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/artifact-mirror.toml");
    let file = Layer::from_file(&path).unwrap();
    let upstream = with_upstream("https://ghes.example.com/api/v3");
    let from_file = Settings::resolve(upstream.clone().over(file)).unwrap();
    let defaults = Settings::resolve(upstream).unwrap();
    assert_eq!(from_file, defaults);
    // ... and it must name every setting (the required `upstream` and
    // the unset optional ones appear commented out).
    let text = std::fs::read_to_string(&path).unwrap();
    let written: toml::Table = toml::from_str(&text).unwrap();
    let all: toml::Table = toml::from_str(&defaults.to_toml()).unwrap();
    for key in all.keys().filter(|k| *k != "upstream") {
        assert!(written.contains_key(key), "{key} missing from the file");
    }
    for key in ["upstream", "public_url", "ca_file", "tls_cert", "tls_key"] {
        assert!(text.contains(&format!("# {key} = ")), "{key} not shown");
    }
}

/// A zero period would panic the housekeeping timer at start.
#[test]
fn housekeeping_interval_must_be_longer_than_zero() {
    let layer = Layer {
        housekeeping_interval: Some(Span(Duration::ZERO)),
        ..with_upstream("http://a")
    };
    let e = Settings::resolve(layer).unwrap_err().to_string();
    assert!(e.contains("housekeeping_interval"), "{e}");
}

#[test]
fn header_limit_is_bounded() {
    let layer = Layer {
        max_header_bytes: Some(100),
        ..with_upstream("http://a")
    };
    let e = Settings::resolve(layer).unwrap_err().to_string();
    assert!(e.contains("max_header_bytes"), "{e}");
}
