//! Prefetch: a completed run's artifacts are stored before anyone asks, by
//! webhook or by polling, with the mirror's own credential (a token file or
//! a GitHub App), and a client still needs GHES's own yes to get a byte.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{get, get_with, hex, send, Harness, Reply, TIMEOUT};
use ghes_sim::fixtures::{
    ADMIN_TOKEN, APP_INSTALLATION_TOKEN, APP_PRIVATE_KEY_PEM, BAD_TOKEN, OUTSIDER_TOKEN,
    PRIVATE_REPO, READER_TOKEN,
};
use ghes_sim::{Delivery, NewArtifact};
use http::{Request, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};

const SECRET: &str = "webhook secret for the tests";

/// Files the mirror's settings point at, kept for the test's length.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn put(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("file written");
        path
    }
}

/// A mirror whose webhook is on (secret `SECRET`) and whose prefetch token
/// is `token`, with the sim announcing completed runs to it.
async fn webhook_mirror(
    files: &Files,
    token: &str,
    tune: impl FnOnce(&mut artifact_mirror::config::Layer),
) -> Harness {
    let secret = files.put("secret", format!("{SECRET}\n").as_bytes());
    let token = files.put("token", token.as_bytes());
    let h = Harness::start_with(|l| {
        l.webhook_secret_file = Some(secret);
        l.prefetch_token_file = Some(token);
        tune(l);
    })
    .await;
    h.sim.set_webhook(&hook_url(&h), SECRET);
    h
}

fn hook_url(h: &Harness) -> String {
    format!("http://{}/_mirror/webhooks/github", h.mirror)
}

fn zip_path(repo: &str, id: u64) -> String {
    format!("/repos/{repo}/actions/artifacts/{id}/zip")
}

/// Waits (bounded) until the store holds these zips and no fill runs.
async fn until_holds(h: &Harness, zips: &[Bytes]) {
    let paths: Vec<_> = zips
        .iter()
        .map(|z| h.blob_file(&hex(&Sha256::digest(z))))
        .collect();
    let deadline = Instant::now() + TIMEOUT;
    while !paths.iter().all(|p| p.is_file()) {
        assert!(Instant::now() < deadline, "prefetch never stored the zips");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.until_fills_end().await;
}

/// The value of one series on `/metrics` (0 when absent).
async fn metric(h: &Harness, series: &str) -> f64 {
    common::metric(h.mirror, series).await.unwrap_or(0.0)
}

/// Waits (bounded) until a series reaches `value`.
async fn until_metric(h: &Harness, series: &str, value: f64) {
    let deadline = Instant::now() + TIMEOUT;
    while metric(h, series).await < value {
        assert!(Instant::now() < deadline, "{series} never reached {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// POSTs a delivery to the mirror's webhook.
async fn deliver(h: &Harness, delivery: &Delivery) -> Reply {
    let mut request = Request::post(hook_url(h));
    for (name, value) in delivery.headers() {
        request = request.header(name, value);
    }
    send(
        request
            .body(Full::new(delivery.body.clone()))
            .expect("request"),
    )
    .await
}

/// The (path, Authorization) of every API request the sim received.
fn api_calls(h: &Harness) -> Vec<(String, String)> {
    h.sim
        .requests()
        .iter()
        .map(|r| {
            let auth = r.header("authorization").unwrap_or_default().to_owned();
            (r.path_and_query.clone(), auth)
        })
        .collect()
}

#[tokio::test]
async fn a_completed_run_is_stored_with_no_client_and_its_first_download_is_a_hit() {
    let files = Files::new();
    let h = webhook_mirror(&files, READER_TOKEN, |_| {}).await;
    h.sim.reset_counters();

    let started = Instant::now();
    let run = h
        .sim
        .complete_run(
            PRIVATE_REPO,
            6100,
            &[("dist", 2 << 20), ("test-results", 100_000)],
        )
        .await;
    let answered = started.elapsed();
    assert_eq!(run.delivered, Some(Ok(202)), "answered at once");
    let zips: Vec<Bytes> = run
        .artifacts
        .iter()
        .map(|a| h.sim.zip_bytes(a.id).expect("zip"))
        .collect();
    until_holds(&h, &zips).await;
    println!(
        "prefetch: run completed → webhook answered in {answered:?}, {} zips ({} bytes) stored {:?} after completion",
        zips.len(),
        zips.iter().map(Bytes::len).sum::<usize>(),
        started.elapsed()
    );
    let c = h.sim.counters();
    assert_eq!((c.list_run, c.download, c.blob_gets), (1, 2, 2), "{c:?}");
    // Every call used the prefetch token, none a client's.
    assert!(api_calls(&h)
        .iter()
        .all(|(_, auth)| auth == &format!("token {READER_TOKEN}")));

    // The first client download: one download-endpoint call, a HIT, no blob GET.
    h.sim.reset_counters();
    let art = &run.artifacts[0];
    let redirect = get(&h.url(&zip_path(PRIVATE_REPO, art.id)), Some(ADMIN_TOKEN)).await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    assert_eq!(redirect.header("x-cache"), Some("HIT"));
    let blob = get(redirect.header("location").expect("location"), None).await;
    assert_eq!(blob.status, StatusCode::OK);
    assert_eq!(blob.body, zips[0]);
    let c = h.sim.counters();
    assert_eq!(
        (c.api_requests, c.download, c.blob_gets),
        (1, 1, 0),
        "{c:?}"
    );

    let m = |s: &'static str| metric(&h, s);
    assert_eq!(
        m("artifact_mirror_webhook_deliveries_total{outcome=\"accepted\"}").await,
        1.0
    );
    assert_eq!(m("artifact_mirror_prefetch_runs_total").await, 1.0);
    assert_eq!(m("artifact_mirror_prefetch_artifacts_total").await, 2.0);
    let bytes: usize = zips.iter().map(Bytes::len).sum();
    assert_eq!(
        m("artifact_mirror_prefetch_bytes_total").await,
        bytes as f64
    );
    assert_eq!(m("artifact_mirror_prefetch_queue_depth").await, 0.0);
}

/// What prefetch saves the first client: its download of a prefetched zip
/// against a cold one of the same size in the same run, the blob host
/// answering 100 ms late (a WAN round trip). Printed, not asserted.
#[tokio::test]
async fn first_download_with_and_without_prefetch_measured() {
    let files = Files::new();
    let h = webhook_mirror(&files, READER_TOKEN, |_| {}).await;
    let size = 4 << 20;
    let run = h
        .sim
        .complete_run(PRIVATE_REPO, 6950, &[("dist", size)])
        .await;
    let warm = run.artifacts[0].clone();
    until_holds(&h, &[h.sim.zip_bytes(warm.id).unwrap()]).await;
    let cold = h.sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 6951,
        name: "dist".into(),
        payload_bytes: size,
        with_digest: false,
        expired: false,
    });
    h.sim
        .knobs()
        .delay_blob_answers(Duration::from_millis(100), 1);
    let mut took = Vec::new();
    for (art, expect) in [(&cold, "MISS"), (&warm, "HIT")] {
        let started = Instant::now();
        let redirect = get(&h.url(&zip_path(PRIVATE_REPO, art.id)), Some(ADMIN_TOKEN)).await;
        assert_eq!(redirect.header("x-cache"), Some(expect));
        let blob = get(redirect.header("location").expect("location"), None).await;
        took.push(started.elapsed());
        assert_eq!(blob.body, h.sim.zip_bytes(art.id).unwrap());
    }
    println!(
        "first download of a {size}-byte zip: cold {:?}, prefetched {:?} ({:.2} of the cold time)",
        took[0],
        took[1],
        took[1].as_secs_f64() / took[0].as_secs_f64()
    );
}

#[tokio::test]
async fn a_bad_or_missing_signature_is_refused_and_nothing_reaches_ghes() {
    let files = Files::new();
    let h = webhook_mirror(&files, READER_TOKEN, |_| {}).await;
    // Runs completed while no webhook was listening, announced by hand.
    h.sim.set_webhook("http://127.0.0.1:9/", SECRET);
    let forged = h.sim.complete_run(PRIVATE_REPO, 6301, &[("a", 1000)]).await;
    let real = h.sim.complete_run(PRIVATE_REPO, 6302, &[("b", 1000)]).await;
    h.sim.reset_counters();

    let wrong_secret = h.sim.completed_delivery(6301, "not the secret").unwrap();
    let mut unsigned = h.sim.completed_delivery(6301, SECRET).unwrap();
    unsigned.signature = None;
    let mut tampered = h.sim.completed_delivery(6301, SECRET).unwrap();
    tampered.body = Bytes::from(
        String::from_utf8(tampered.body.to_vec())
            .unwrap()
            .replace("6301", "6302"),
    );
    for delivery in [wrong_secret, unsigned, tampered] {
        let r = deliver(&h, &delivery).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{:?}",
            delivery.signature
        );
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .contains("X-Hub-Signature-256"),
            "{:?}",
            r.json()
        );
    }
    // A good delivery afterwards is the only work GHES sees.
    let good = h.sim.completed_delivery(6302, SECRET).unwrap();
    assert_eq!(deliver(&h, &good).await.status, StatusCode::ACCEPTED);
    let zip = h.sim.zip_bytes(real.artifacts[0].id).unwrap();
    until_holds(&h, &[zip]).await;
    let c = h.sim.counters();
    assert_eq!((c.api_requests, c.list_run, c.download), (2, 1, 1), "{c:?}");
    assert!(api_calls(&h).iter().all(
        |(p, _)| p.contains("/6302/") || p.ends_with(&format!("/{}/zip", real.artifacts[0].id))
    ));
    assert_eq!(
        h.stored_files(),
        1,
        "run 6301 ({:?}) not fetched",
        forged.artifacts
    );
    assert_eq!(
        metric(
            &h,
            "artifact_mirror_webhook_deliveries_total{outcome=\"bad_signature\"}"
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn a_replayed_delivery_is_answered_but_fetched_once() {
    let files = Files::new();
    // One worker: runs are done in the order they came.
    let h = webhook_mirror(&files, READER_TOKEN, |l| l.prefetch_concurrency = Some(1)).await;
    h.sim.set_webhook("http://127.0.0.1:9/", SECRET);
    let first = h.sim.complete_run(PRIVATE_REPO, 6401, &[("a", 1000)]).await;
    let later = h.sim.complete_run(PRIVATE_REPO, 6402, &[("b", 1000)]).await;
    h.sim.reset_counters();

    let delivery = h.sim.completed_delivery(6401, SECRET).unwrap();
    for _ in 0..3 {
        assert_eq!(deliver(&h, &delivery).await.status, StatusCode::ACCEPTED);
    }
    let next = h.sim.completed_delivery(6402, SECRET).unwrap();
    assert_eq!(deliver(&h, &next).await.status, StatusCode::ACCEPTED);
    let zips: Vec<Bytes> = [&first, &later]
        .iter()
        .map(|r| h.sim.zip_bytes(r.artifacts[0].id).unwrap())
        .collect();
    until_holds(&h, &zips).await;
    let c = h.sim.counters();
    assert_eq!((c.list_run, c.download, c.blob_gets), (2, 2, 2), "{c:?}");
    let m = |s: &'static str| metric(&h, s);
    assert_eq!(
        m("artifact_mirror_webhook_deliveries_total{outcome=\"duplicate\"}").await,
        2.0
    );
    assert_eq!(
        m("artifact_mirror_webhook_deliveries_total{outcome=\"accepted\"}").await,
        2.0
    );
}

#[tokio::test]
async fn webhook_answers_follow_githubs_rules() {
    let files = Files::new();
    let h = webhook_mirror(&files, READER_TOKEN, |_| {}).await;
    h.sim.reset_counters();
    let signed = |event: &str, body: &str| Delivery::signed("d-1", event, body.to_owned(), SECRET);

    let ping = deliver(
        &h,
        &signed(
            "ping",
            r#"{"zen":"Keep it logically awesome.","hook_id":1}"#,
        ),
    )
    .await;
    assert_eq!(ping.status, StatusCode::OK);
    let push = deliver(&h, &signed("push", r#"{"ref":"refs/heads/main"}"#)).await;
    assert_eq!(push.status, StatusCode::ACCEPTED);
    let requested = deliver(
        &h,
        &signed(
            "workflow_run",
            r#"{"action":"requested","workflow_run":{"id":1},"repository":{"full_name":"o/r"}}"#,
        ),
    )
    .await;
    assert_eq!(requested.status, StatusCode::ACCEPTED);
    let malformed = deliver(&h, &signed("workflow_run", "{not json")).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(malformed.json()["message"]
        .as_str()
        .unwrap()
        .contains("JSON"));
    let no_run = deliver(
        &h,
        &signed(
            "workflow_run",
            r#"{"action":"completed","repository":{"full_name":"o/r"}}"#,
        ),
    )
    .await;
    assert_eq!(no_run.status, StatusCode::BAD_REQUEST);

    let huge = Delivery::signed(
        "d-2",
        "workflow_run",
        vec![b' '; 25 * 1024 * 1024 + 1],
        SECRET,
    );
    assert_eq!(
        deliver(&h, &huge).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    let wrong_method = get(&hook_url(&h), None).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(h.sim.counters().api_requests, 0, "nothing asked of GHES");
    let m = |s: &'static str| metric(&h, s);
    assert_eq!(
        m("artifact_mirror_webhook_deliveries_total{outcome=\"ignored\"}").await,
        3.0
    );
    assert_eq!(
        m("artifact_mirror_webhook_deliveries_total{outcome=\"invalid\"}").await,
        3.0
    );
}

/// Unsigned posts cannot make the mirror hold more than 8 bodies at once:
/// past that a delivery gets 503 with `Retry-After`, and once they end the
/// webhook answers again.
#[tokio::test]
async fn webhook_bodies_read_at_once_are_bounded() {
    use tokio::io::AsyncWriteExt;
    let files = Files::new();
    let h = webhook_mirror(&files, READER_TOKEN, |_| {}).await;
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut conn = tokio::net::TcpStream::connect(h.mirror)
            .await
            .expect("connect");
        let head = "POST /_mirror/webhooks/github HTTP/1.1\r\nhost: m\r\n\
                    x-github-event: ping\r\ncontent-length: 1000\r\n\r\n{";
        conn.write_all(head.as_bytes()).await.expect("head sent");
        stalled.push(conn);
    }
    let ping = Delivery::signed("p", "ping", "{}", SECRET);
    let until = |want: StatusCode| {
        let (h, ping) = (&h, &ping);
        async move {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                let r = deliver(h, ping).await;
                if r.status == want {
                    return r;
                }
                assert!(Instant::now() < deadline, "never {want}, last {}", r.status);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let busy = until(StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(busy.header("retry-after"), Some("1"));
    drop(stalled);
    until(StatusCode::OK).await;
}

#[tokio::test]
async fn without_a_webhook_secret_the_route_is_not_found() {
    let h = Harness::start().await;
    let delivery = Delivery::signed("d", "ping", "{}", SECRET);
    assert_eq!(deliver(&h, &delivery).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn polling_finds_a_run_completed_after_the_baseline_with_304s_between() {
    let files = Files::new();
    let token = files.put("token", READER_TOKEN.as_bytes());
    let h = Harness::start_with(|l| {
        l.prefetch_token_file = Some(token);
        l.prefetch_poll_repos = Some(vec![PRIVATE_REPO.to_owned()]);
        l.prefetch_poll_interval = Some("50ms".parse().unwrap());
    })
    .await;
    // The baseline, then a free 304: the seeded run 6001 is not fetched.
    let deadline = Instant::now() + TIMEOUT;
    while h.sim.counters().not_modified < 1 {
        assert!(Instant::now() < deadline, "no conditional poll");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = h.sim.counters();
    assert!(c.list_runs >= 2, "{c:?}");
    assert_eq!(
        (c.list_run, c.download),
        (0, 0),
        "the baseline is not fetched"
    );

    let started = Instant::now();
    let run = h
        .sim
        .complete_run(PRIVATE_REPO, 6500, &[("dist", 300_000)])
        .await;
    let zip = h.sim.zip_bytes(run.artifacts[0].id).unwrap();
    until_holds(&h, &[zip]).await;
    println!(
        "prefetch by polling (X-Poll-Interval 1 s): zip stored {:?} after the run completed",
        started.elapsed()
    );
    let c = h.sim.counters();
    assert_eq!((c.list_run, c.download), (1, 1), "{c:?}");
    assert_eq!(h.stored_files(), 1);
    // Every runs poll carried the ETag it was given after the first.
    let polls: Vec<_> = h
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.contains("/actions/runs?"))
        .collect();
    assert!(polls[0].header("if-none-match").is_none());
    assert!(polls[1..]
        .iter()
        .all(|r| r.header("if-none-match").is_some()));
    // GHES asked for 1 s between polls: the mirror's 50 ms did not win.
    assert!(polls.len() < 20, "{} polls", polls.len());
}

/// A mirror whose prefetch credential is GitHub App 4242 (installation 99
/// in the sim's deliveries), installation tokens valid `token_lifetime`
/// seconds; two runs complete one after the other. Answers the sim's
/// counters after both runs' zips are stored.
async fn two_runs_with_an_app(
    token_lifetime: u64,
    runs: [u64; 2],
) -> (Harness, ghes_sim::Counters) {
    let files = Files::new();
    let key = files.put("app.pem", APP_PRIVATE_KEY_PEM);
    let secret = files.put("secret", SECRET.as_bytes());
    let h = Harness::start_with(|l| {
        l.webhook_secret_file = Some(secret);
        l.github_app_id = Some(4242);
        l.github_app_key_file = Some(key);
    })
    .await;
    h.sim.enable_github_app(4242, 99);
    h.sim.set_app_token_lifetime(token_lifetime);
    h.sim.set_webhook(&hook_url(&h), SECRET);
    h.sim.reset_counters();
    let mut zips = Vec::new();
    for run_id in runs {
        let run = h
            .sim
            .complete_run(PRIVATE_REPO, run_id, &[("dist", 5000)])
            .await;
        assert_eq!(run.delivered, Some(Ok(202)));
        zips.push(h.sim.zip_bytes(run.artifacts[0].id).unwrap());
        until_holds(&h, &zips).await;
    }
    let counters = h.sim.counters();
    (h, counters)
}

#[tokio::test]
async fn an_app_token_is_minted_once_and_reused() {
    let (h, c) = two_runs_with_an_app(3600, [6601, 6602]).await;
    assert_eq!((c.app_token_requests, c.app_tokens_minted), (1, 1), "{c:?}");
    let token = format!("token {APP_INSTALLATION_TOKEN}");
    for (path, auth) in api_calls(&h) {
        if path.contains("/access_tokens") {
            assert!(auth.starts_with("Bearer "), "{path}");
        } else {
            assert_eq!(auth, token, "{path}");
        }
    }
}

/// A token within 5 minutes of its `expires_at` is not used again: the
/// next run mints a fresh one (a fill must not run into the token's end).
#[tokio::test]
async fn an_app_token_close_to_its_expiry_is_minted_again() {
    let (_h, c) = two_runs_with_an_app(240, [6651, 6652]).await;
    assert_eq!((c.app_token_requests, c.app_tokens_minted), (2, 2), "{c:?}");
}

/// An externally rotated token: the file is read again when it changes.
#[tokio::test]
async fn a_rotated_token_file_is_used_from_the_next_run() {
    let files = Files::new();
    let h = webhook_mirror(&files, OUTSIDER_TOKEN, |_| {}).await;
    let first = h
        .sim
        .complete_run(PRIVATE_REPO, 6751, &[("dist", 5000)])
        .await;
    assert_eq!(first.delivered, Some(Ok(202)));
    until_metric(&h, "artifact_mirror_prefetch_errors_total", 1.0).await;
    assert_eq!(
        h.stored_files(),
        0,
        "the old token cannot read the repository"
    );

    files.put("token", format!("{READER_TOKEN}\n").as_bytes());
    let second = h
        .sim
        .complete_run(PRIVATE_REPO, 6752, &[("dist", 6000)])
        .await;
    assert_eq!(second.delivered, Some(Ok(202)));
    until_holds(&h, &[h.sim.zip_bytes(second.artifacts[0].id).unwrap()]).await;
    let auths: Vec<String> = api_calls(&h).into_iter().map(|(_, a)| a).collect();
    assert_eq!(auths.first(), Some(&format!("token {OUTSIDER_TOKEN}")));
    assert_eq!(auths.last(), Some(&format!("token {READER_TOKEN}")));
}

#[tokio::test]
async fn artifacts_over_prefetch_max_bytes_or_not_named_are_not_fetched() {
    let files = Files::new();
    let h = webhook_mirror(&files, READER_TOKEN, |l| {
        l.prefetch_max_bytes = Some(20_000);
        l.prefetch_names = Some(vec!["dist-*".to_owned()]);
    })
    .await;
    h.sim.reset_counters();
    let run = h
        .sim
        .complete_run(
            PRIVATE_REPO,
            6700,
            &[("dist-small", 1000), ("dist-big", 100_000), ("logs", 1000)],
        )
        .await;
    assert_eq!(run.delivered, Some(Ok(202)));
    let small = h.sim.zip_bytes(run.artifacts[0].id).unwrap();
    until_holds(&h, &[small]).await;
    // The run is listed once and judged whole before any fill starts.
    until_metric(&h, "artifact_mirror_prefetch_artifacts_total", 1.0).await;
    let c = h.sim.counters();
    assert_eq!((c.list_run, c.download, c.blob_gets), (1, 1, 1), "{c:?}");
    assert_eq!(h.stored_files(), 1);
    let m = |s: &'static str| metric(&h, s);
    assert_eq!(
        m("artifact_mirror_prefetch_skipped_total{reason=\"size\"}").await,
        1.0
    );
    assert_eq!(
        m("artifact_mirror_prefetch_skipped_total{reason=\"name\"}").await,
        1.0
    );
}

#[tokio::test]
async fn a_client_without_access_still_gets_ghes_answer_for_a_prefetched_zip() {
    let files = Files::new();
    let h = webhook_mirror(&files, READER_TOKEN, |_| {}).await;
    let run = h
        .sim
        .complete_run(PRIVATE_REPO, 6800, &[("dist", 5000)])
        .await;
    let art = &run.artifacts[0];
    until_holds(&h, &[h.sim.zip_bytes(art.id).unwrap()]).await;
    let path = zip_path(PRIVATE_REPO, art.id);
    for (token, status) in [
        (Some(OUTSIDER_TOKEN), StatusCode::NOT_FOUND),
        (Some(BAD_TOKEN), StatusCode::UNAUTHORIZED),
        // Anonymous: a private repository does not exist for it.
        (None, StatusCode::NOT_FOUND),
    ] {
        let via_mirror = get(&h.url(&path), token).await;
        let direct = get(&h.direct_url(&path), token).await;
        assert_eq!(via_mirror.status, status, "{token:?}");
        assert_eq!(via_mirror.json()["message"], direct.json()["message"]);
        assert!(via_mirror.header("location").is_none());
        assert!(via_mirror.header("x-cache").is_none());
    }
}

#[tokio::test]
async fn a_prefetch_credential_without_access_gets_ghes_404_and_stores_nothing() {
    let files = Files::new();
    let h = webhook_mirror(&files, OUTSIDER_TOKEN, |_| {}).await;
    let run = h
        .sim
        .complete_run(PRIVATE_REPO, 6900, &[("dist", 5000)])
        .await;
    assert_eq!(run.delivered, Some(Ok(202)));
    until_metric(&h, "artifact_mirror_prefetch_errors_total", 1.0).await;
    let c = h.sim.counters();
    assert_eq!((c.list_run, c.download, c.blob_gets), (1, 0, 0), "{c:?}");
    assert_eq!(h.stored_files(), 0);
    // A client with access then downloads as if there were no prefetch.
    let r = get_with(
        &h.url(&zip_path(PRIVATE_REPO, run.artifacts[0].id)),
        Some(ADMIN_TOKEN),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("x-cache"), Some("MISS"));
}
