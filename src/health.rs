//! `/healthz` (the process answers) and `/readyz` (it can do its job: the
//! data dir takes writes and the index is open). The shared store is
//! reported but does not decide readiness: without it downloads still work,
//! from GHES and the local disk.

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::body::{self, Body};
use crate::index::Index;

pub fn alive() -> Response<Body> {
    json(StatusCode::OK, json!({ "status": "ok" }))
}

pub async fn ready(
    data_dir: &std::path::Path,
    index: &Index,
    shared_store: Option<&'static str>,
) -> Response<Body> {
    let probe = data_dir.join(".ready-probe");
    let disk = async {
        // Private like every other file under the data dir.
        let mut file = crate::private::create_file_async(&probe).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, b"ok").await?;
        tokio::fs::remove_file(&probe).await
    }
    .await;
    let index_check = {
        let index = index.clone();
        tokio::task::spawn_blocking(move || index.check())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
    };
    let disk = disk.map_err(|e| e.to_string());
    let ok = disk.is_ok() && index_check.is_ok();
    let verdict = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let mut checks = json!({ "data_dir": verdict(&disk), "index": verdict(&index_check) });
    if let Some(state) = shared_store {
        checks["shared_store"] = state.into();
    }
    json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        json!({
            "status": if ok { "ready" } else { "not ready" },
            "checks": checks,
        }),
    )
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(body::full(value.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
