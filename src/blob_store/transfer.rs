//! The transfer of one fill from the blob storage upstream redirects to:
//! resumed with `Range` after a cut (or from the staged file an earlier
//! process left), relocated through the download endpoint when the signed
//! URL expired, each answer checked against what was staged (size,
//! validator, `Content-Range`) before a reader is told of its bytes.

use std::io::SeekFrom;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use http::header;
use http::StatusCode;
use hyper::body::Body as HttpBody;
use sha2::{Digest, Sha256};
use tokio::io::AsyncSeekExt;
use tokio::sync::watch;

use crate::clock::now_secs;
use crate::error::FillError;
use crate::index::{BlobRecord, Facts};

use super::fill::{append, check_size, create, seal, FillState};
use super::relay::Origin;
use super::staged::{self, Staged, StagedRecord, Validator};
use super::BlobStore;

/// Transfers attempted per fill (the first and the resumes).
const ATTEMPTS: u32 = 5;

impl BlobStore {
    /// Brings the whole zip into `tmp`, resuming with `Range` after a cut,
    /// or from the staged file an earlier process left (`resume`).
    pub(super) async fn transfer(
        &self,
        artifact: u64,
        tmp: &Path,
        origin: &Origin,
        facts: &Facts,
        tx: &watch::Sender<FillState>,
        resume: Option<Staged>,
    ) -> Result<BlobRecord, FillError> {
        let mut total = facts.size;
        let mut name = facts.name.clone();
        let mut expected_sha = facts.sha256.clone();
        // The staged prefix of an earlier process, until upstream's first
        // answer confirms it (same size, validator, `Content-Range`): no
        // reader is told of its bytes before that.
        let mut unconfirmed: Option<StagedRecord> = None;
        let (mut file, mut hasher, mut written) = match resume {
            Some(s) => match reopen(&s).await {
                Ok((file, hasher)) => {
                    tracing::info!(artifact, bytes = s.len, "resuming a staged fill");
                    name = name.or_else(|| s.record.name.clone());
                    expected_sha = expected_sha.or_else(|| s.record.sha256.clone());
                    let len = s.len;
                    unconfirmed = Some(s.record);
                    (file, hasher, len)
                }
                Err(e) => {
                    tracing::warn!(artifact, error = %e, "staged fill unreadable; starting over");
                    (create(tmp).await?, Sha256::new(), 0)
                }
            },
            None => (create(tmp).await?, Sha256::new(), 0),
        };
        // Upstream's validator of the bytes in the staged file.
        let mut validator = unconfirmed.as_ref().map(|r| r.validator.clone());
        // A resumed answer's validator differed: the next request asks for
        // the whole zip again.
        let mut changed = false;
        let mut last_error = FillError::NoAnswer;
        // After a restart from byte 0 (a store that ignored `Range`): how
        // many bytes the earlier answers had written, and their digest.
        // Clients may already hold those bytes, so the new answer must
        // repeat them exactly (checked once it reaches that length).
        let mut replay: Option<(u64, Vec<u8>)> = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            let from = (written > 0 && !changed).then_some(written);
            let response = match self.fetcher.get(&origin.location(), from).await {
                Ok(r) => r,
                Err(e) => {
                    last_error = FillError::Unreachable(e);
                    continue;
                }
            };
            match response.status() {
                StatusCode::OK if unconfirmed.take().is_some() => {
                    // The staged prefix is not confirmed: start over; no
                    // client read it.
                    tracing::info!(artifact, "range not honoured; staged prefix dropped");
                    restart(&mut file, tmp).await?;
                    (hasher, written) = (Sha256::new(), 0);
                    let length = content_length(response.headers())
                        .ok_or_else(|| FillError::BadAnswer("no Content-Length".into()))?;
                    check_size(total, length)?;
                    total = Some(length);
                    validator = Some(
                        self.record(tmp, artifact, response.headers(), length, facts, &name)
                            .await,
                    );
                }
                StatusCode::OK => {
                    changed = false;
                    if written > 0 {
                        // The store ignored the range: start over, writing
                        // over the bytes in place rather than truncating, so
                        // clients reading them never find the file short.
                        // An earlier restart's check covers more bytes.
                        if replay.is_none() {
                            replay = Some((written, hasher.clone().finalize().to_vec()));
                        }
                        file.seek(SeekFrom::Start(0))
                            .await
                            .map_err(FillError::io("seek in", tmp))?;
                        hasher = Sha256::new();
                        written = 0;
                    }
                    let length = content_length(response.headers())
                        .ok_or_else(|| FillError::BadAnswer("no Content-Length".into()))?;
                    check_size(total, length)?;
                    total = Some(length);
                    if name.is_none() {
                        name = disposition_name(response.headers());
                    }
                    validator = Some(
                        self.record(tmp, artifact, response.headers(), length, facts, &name)
                            .await,
                    );
                }
                StatusCode::PARTIAL_CONTENT
                    if validator
                        .as_ref()
                        .is_some_and(|v| *v != Validator::of(response.headers()))
                        || unconfirmed.as_ref().is_some_and(|r| {
                            content_range(response.headers()) != Some((written, r.size))
                        }) =>
                {
                    // Other content than the bytes staged: a staged prefix
                    // no client read is dropped; bytes clients may hold are
                    // fetched again from the start and must repeat (the
                    // 200 path checks them).
                    tracing::info!(artifact, "blob changed upstream; starting over");
                    last_error = FillError::BadAnswer("the blob changed upstream".into());
                    if unconfirmed.take().is_some() {
                        restart(&mut file, tmp).await?;
                        (hasher, written, validator) = (Sha256::new(), 0, None);
                    } else {
                        changed = true;
                    }
                    continue;
                }
                StatusCode::PARTIAL_CONTENT => {
                    if unconfirmed.take().is_some() {
                        tracing::info!(artifact, from = written, "staged fill confirmed");
                    }
                    let (start, length) = content_range(response.headers()).ok_or_else(|| {
                        FillError::BadAnswer("a 206 without a usable Content-Range".into())
                    })?;
                    if start != written {
                        return Err(FillError::BadAnswer(format!(
                            "asked for bytes from {written}, got from {start}"
                        )));
                    }
                    check_size(total, length)?;
                    total = Some(length);
                }
                // An expired or refused signed URL: ask for a fresh one.
                StatusCode::BAD_REQUEST
                | StatusCode::FORBIDDEN
                | StatusCode::NOT_FOUND
                | StatusCode::GONE => {
                    last_error = FillError::UpstreamStatus(response.status());
                    if !origin.relocate().await {
                        return Err(FillError::NoFreshLocation(response.status()));
                    }
                    continue;
                }
                other => {
                    last_error = FillError::UpstreamStatus(other);
                    continue;
                }
            }
            let size = total.unwrap_or(0);
            tx.send_modify(|s| {
                if let FillState::Running {
                    total,
                    name: n,
                    written: w,
                } = s
                {
                    *total = Some(size);
                    *w = written;
                    n.clone_from(&name);
                }
            });
            let mut body = response.into_body();
            let mut cut = None;
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                let data = match frame {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => data,
                        Err(_) => continue,
                    },
                    Err(e) => {
                        cut = Some(e.to_string());
                        break;
                    }
                };
                if written + data.len() as u64 > size {
                    return Err(FillError::BadAnswer(format!("more than {size} bytes")));
                }
                if let Some((upto, digest)) = &replay {
                    if written + data.len() as u64 >= *upto {
                        // `upto - written` is at most `data.len()` here.
                        let head = usize::try_from(upto - written)
                            .unwrap_or(data.len())
                            .min(data.len());
                        let mut prefix = hasher.clone();
                        prefix.update(&data[..head]);
                        if prefix.finalize().as_slice() != digest.as_slice() {
                            return Err(FillError::BadAnswer(format!(
                                "the restarted answer differs in its first {upto} bytes"
                            )));
                        }
                        replay = None;
                    }
                }
                self.metrics.fetched_from_upstream(data.len() as u64);
                append(&mut file, &mut hasher, &mut written, &data, tmp, tx).await?;
            }
            if written == size {
                let sha256 = seal(&file, hasher, tmp, expected_sha.as_deref()).await?;
                return Ok(BlobRecord {
                    sha256,
                    size,
                    name: name.unwrap_or_else(|| format!("artifact-{artifact}")),
                    expires_at: facts.expires_at,
                    stored_at: now_secs(),
                    repo: facts.repo.clone(),
                });
            }
            last_error = FillError::Cut(
                cut.unwrap_or_else(|| format!("it ended after {written} of {size} bytes")),
            );
            tracing::info!(artifact, written, size, "blob transfer cut; resuming");
        }
        Err(FillError::GaveUp {
            attempts: ATTEMPTS,
            last: Box::new(last_error),
        })
    }

    /// Writes the staged record beside `tmp` for upstream's answer (a
    /// failure only costs resuming after a restart); returns its validator.
    /// Awaited, so that the removal at the fill's end cannot overtake it.
    async fn record(
        &self,
        tmp: &Path,
        artifact: u64,
        headers: &http::HeaderMap,
        size: u64,
        facts: &Facts,
        name: &Option<String>,
    ) -> Validator {
        let validator = Validator::of(headers);
        let record = StagedRecord {
            artifact,
            size,
            sha256: facts.sha256.clone(),
            name: name.clone(),
            validator: validator.clone(),
            boot: staged::boot_id(),
            started: now_secs(),
        };
        let tmp = tmp.to_owned();
        let written =
            tokio::task::spawn_blocking(move || staged::write_record(&tmp, &record)).await;
        if let Err(e) = written.map_err(std::io::Error::other).and_then(|r| r) {
            tracing::warn!(artifact, error = %e, "staged record not written");
        }
        validator
    }
}

/// Empties a staged file whose prefix upstream did not confirm.
async fn restart(file: &mut tokio::fs::File, tmp: &Path) -> Result<(), FillError> {
    file.set_len(0)
        .await
        .map_err(FillError::io("truncate", tmp))?;
    file.seek(SeekFrom::Start(0))
        .await
        .map_err(FillError::io("seek in", tmp))?;
    Ok(())
}

/// Opens a staged file for appending and re-hashes its prefix, on the
/// blocking pool.
async fn reopen(s: &Staged) -> std::io::Result<(tokio::fs::File, Sha256)> {
    let (part, len) = (s.part.clone(), s.len);
    let (file, hasher) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&part)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(buf.len()));
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        file.set_len(len)?;
        file.seek(SeekFrom::Start(len))?;
        Ok::<_, std::io::Error>((file, hasher))
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok((tokio::fs::File::from_std(file), hasher))
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `bytes a-b/total` → (a, total).
pub(super) fn content_range(headers: &http::HeaderMap) -> Option<(u64, u64)> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.parse().ok()?, total.parse().ok()?))
}

/// `attachment; filename="x.zip"; …` → `x`: the parameter's value only, up
/// to its closing quote or, unquoted, the next `;`.
fn disposition_name(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_DISPOSITION)?.to_str().ok()?;
    let value = v.split("filename=").nth(1)?.trim_start();
    let name = match value.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => value.split(';').next()?.trim(),
    };
    let name = name.strip_suffix(".zip").unwrap_or(name);
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::super::test_host::{fetcher, origin, zip, Answer, Host, SIZE};
    use super::super::StoreLimits;
    use super::*;
    use crate::credential::hex;
    use crate::index::Index;
    use crate::metrics::Metrics;

    /// A store in a temporary dir, and the staging file of artifact 1's fill.
    struct Store {
        _dir: tempfile::TempDir,
        store: BlobStore,
        tmp: PathBuf,
    }

    fn store() -> Store {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let index = Index::open(&dir.path().join("index"), 1 << 20).expect("an index");
        let metrics = Arc::new(Metrics::new());
        let limits = StoreLimits {
            quota: 1 << 30,
            max_blob: 1 << 30,
            linger: Duration::from_secs(1),
        };
        let (store, _) =
            BlobStore::open(dir.path(), index, fetcher(metrics.clone()), limits, metrics)
                .expect("a store");
        let tmp = dir.path().join("tmp").join("1.part");
        Store {
            _dir: dir,
            store,
            tmp,
        }
    }

    /// What the artifact's JSON said: its digest (the zip's) and `size`.
    fn facts(host: &Host, size: Option<u64>) -> Facts {
        Facts {
            sha256: Some(hex(&Sha256::digest(&host.zip))),
            size,
            ..Facts::default()
        }
    }

    struct Outcome {
        result: Result<BlobRecord, FillError>,
        /// The staged file's bytes afterwards.
        staged: Vec<u8>,
        /// The last state readers were shown.
        state: FillState,
    }

    /// One transfer of artifact 1 into `s`'s staging file.
    async fn transfer(s: &Store, origin: &Origin, facts: Facts, resume: Option<Staged>) -> Outcome {
        let (tx, rx) = watch::channel(FillState::Running {
            written: 0,
            total: None,
            name: None,
        });
        let run = s.store.transfer(1, &s.tmp, origin, &facts, &tx, resume);
        let result = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the transfer ends in time");
        let state = rx.borrow().clone();
        Outcome {
            result,
            staged: std::fs::read(&s.tmp).unwrap_or_default(),
            state,
        }
    }

    /// A whole answer: checked against the JSON's digest, named from
    /// `Content-Disposition`, every byte shown to readers as written.
    #[tokio::test]
    async fn a_whole_answer_is_staged_checked_and_named() {
        let (host, out) = run(&[], None, None).await;
        let record = out.result.expect("transferred");
        assert_eq!((record.size, record.name.as_str()), (SIZE, "dist"));
        assert_eq!(record.sha256, hex(&Sha256::digest(&host.zip)));
        assert_eq!(out.staged, host.zip);
        assert!(
            matches!(&out.state, FillState::Running { written: SIZE, total: Some(SIZE), name: Some(n) } if n == "dist"),
            "{:?}",
            out.state
        );
        assert_eq!(host.asked(), [None]);
    }

    #[tokio::test]
    async fn a_cut_transfer_resumes_from_what_was_written() {
        let (host, out) = run(&[Answer::CutAfter(300)], None, None).await;
        assert_eq!(out.result.expect("transferred").size, SIZE);
        assert_eq!(out.staged, host.zip);
        assert_eq!(host.asked(), [None, Some(300)]);
    }

    /// A store that ignores `Range` after a cut sends the whole zip again:
    /// it is written over the bytes in place, and must repeat the ones
    /// clients may already hold.
    #[tokio::test]
    async fn a_restarted_answer_must_repeat_the_bytes_already_written() {
        let (host, out) = run(&[Answer::CutAfter(300), Answer::Whole], None, None).await;
        assert_eq!(out.result.expect("transferred").size, SIZE);
        assert_eq!(out.staged, host.zip);
        assert_eq!(host.asked(), [None, Some(300)]);

        let (_, out) = run(&[Answer::CutAfter(300), Answer::WholeOther], None, None).await;
        let err = out.result.expect_err("other content");
        assert!(
            err.to_string().contains("differs in its first 300 bytes"),
            "{err}"
        );
    }

    /// A resumed answer with another validator: the blob changed upstream;
    /// the next request asks for the whole zip again.
    #[tokio::test]
    async fn a_resumed_answer_with_another_validator_is_fetched_whole_again() {
        let (host, out) = run(&[Answer::CutAfter(300), Answer::OtherETag], None, None).await;
        assert_eq!(out.result.expect("transferred").size, SIZE);
        assert_eq!(out.staged, host.zip);
        assert_eq!(host.asked(), [None, Some(300), None]);
    }

    /// The staged prefix of an earlier process: `prefix` written, recorded
    /// with upstream's ETag and `size`.
    fn staged(s: &Store, prefix: &[u8], size: u64) -> Staged {
        std::fs::write(&s.tmp, prefix).expect("staged");
        let record = StagedRecord {
            artifact: 1,
            size,
            sha256: None,
            name: None,
            validator: Validator::ETag("\"v1\"".into()),
            boot: staged::boot_id(),
            started: now_secs(),
        };
        Staged {
            part: s.tmp.clone(),
            record,
            len: prefix.len() as u64,
        }
    }

    /// One transfer of artifact 1 into a new store from a host answering
    /// `answers`, the JSON giving `size`; `prefix` (bytes, the size they
    /// were recorded with) is an earlier process's staged file to resume.
    async fn run(
        answers: &[Answer],
        size: Option<u64>,
        prefix: Option<(&[u8], u64)>,
    ) -> (Arc<Host>, Outcome) {
        let (host, uri) = Host::start(answers).await;
        let s = store();
        let resume = prefix.map(|(bytes, recorded)| staged(&s, bytes, recorded));
        let out = transfer(&s, &origin(uri, vec![]), facts(&host, size), resume).await;
        (host, out)
    }

    #[tokio::test]
    async fn a_staged_prefix_is_resumed_when_upstream_confirms_it() {
        let (host, out) = run(&[], None, Some((&zip()[..400], SIZE))).await;
        assert_eq!(out.result.expect("transferred").size, SIZE);
        assert_eq!(out.staged, host.zip);
        assert_eq!(host.asked(), [Some(400)]);

        // The prefix is hashed again: bytes that changed on disk fail the
        // digest rather than being served.
        let (_, out) = run(&[], None, Some((&[0; 400], SIZE))).await;
        let err = out.result.expect_err("a prefix of other bytes");
        assert!(matches!(err, FillError::DigestMismatch { .. }), "{err}");
    }

    /// Upstream does not confirm the staged prefix (another validator,
    /// another size, or `Range` ignored): it is dropped and the zip fetched
    /// from its start, no client having read it.
    #[tokio::test]
    async fn a_staged_prefix_upstream_does_not_confirm_is_dropped() {
        for (answer, size, asked) in [
            (Answer::OtherETag, SIZE, vec![Some(400), None]),
            (Answer::Range, 2 * SIZE, vec![Some(400), None]),
            (Answer::Whole, SIZE, vec![Some(400)]),
        ] {
            // Bytes upstream never sent: being dropped, they cannot matter.
            let (host, out) = run(&[answer], None, Some((&[0; 400], size))).await;
            assert_eq!(out.result.expect("transferred").size, SIZE, "{answer:?}");
            assert_eq!(out.staged, host.zip, "{answer:?}");
            assert_eq!(host.asked(), asked, "{answer:?}");
        }
    }

    #[tokio::test]
    async fn answers_that_contradict_the_asked_bytes_or_the_size_fail_the_fill() {
        for (answers, size, says) in [
            (
                vec![Answer::CutAfter(300), Answer::OffByOne],
                None,
                "asked for bytes from 300, got from 301",
            ),
            (vec![Answer::Overlong], None, "more than 500 bytes"),
            (vec![Answer::Range], Some(SIZE - 1), "size mismatch"),
        ] {
            let (_, out) = run(&answers, size, None).await;
            let err = out.result.expect_err("refused");
            assert!(err.to_string().contains(says), "{answers:?}: {err}");
        }
    }

    #[tokio::test]
    async fn a_refused_location_is_replaced_by_a_fresh_one_or_the_fill_fails() {
        let (host, uri) = Host::start(&[Answer::Status(StatusCode::FORBIDDEN)]).await;
        let s = store();
        let fresh = origin(uri.clone(), vec![uri]);
        let out = transfer(&s, &fresh, facts(&host, None), None).await;
        assert_eq!(out.result.expect("transferred").size, SIZE);
        assert_eq!(host.asked(), [None, None]);

        let (_, out) = run(&[Answer::Status(StatusCode::GONE)], None, None).await;
        let err = out.result.expect_err("no fresh location");
        assert!(
            matches!(err, FillError::NoFreshLocation(StatusCode::GONE)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn five_failed_answers_give_up_after_backing_off() {
        let started = std::time::Instant::now();
        let answers = [Answer::Status(StatusCode::SERVICE_UNAVAILABLE); 5];
        let (host, out) = run(&answers, None, None).await;
        // 100 + 200 + 300 + 400 ms between tries (a lower bound only).
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let err = out.result.expect_err("five 503s");
        assert!(
            matches!(&err, FillError::GaveUp { attempts: ATTEMPTS, last } if matches!(**last, FillError::UpstreamStatus(StatusCode::SERVICE_UNAVAILABLE))),
            "{err}"
        );
        assert_eq!(host.asked().len(), ATTEMPTS as usize);
    }

    #[test]
    fn range_and_disposition_headers_parse() {
        let mut h = http::HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 100-199/1000".parse().unwrap());
        h.insert(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"build.zip\"".parse().unwrap(),
        );
        assert_eq!(content_range(&h), Some((100, 1000)));
        assert_eq!(disposition_name(&h).as_deref(), Some("build"));
        for (header, name) in [
            ("attachment; filename=build.zip; size=3", "build"),
            ("attachment; filename=\"a;b.zip\"; size=3", "a;b"),
            ("attachment;filename=\"c.zip\";creation-date=x", "c"),
        ] {
            h.insert(header::CONTENT_DISPOSITION, header.parse().unwrap());
            assert_eq!(disposition_name(&h).as_deref(), Some(name), "{header}");
        }
    }
}
