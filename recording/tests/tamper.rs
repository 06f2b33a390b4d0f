//! Tampering: a real recording (several sealed segments and a manifest) is altered in every
//! way an attacker or a broken copy could, and verify must fail and name the object at fault.

use std::io::Write;
use std::sync::OnceLock;

use cassette_recording::record::{Event, Gap};
use cassette_recording::sink::GcsOptions;
use cassette_recording::{
    Completeness, Problem, Recorder, RecorderConfig, RecordingObjects, RecordingPath, Report,
    SegmentObject, Sink, load, verify,
};
use proptest::prelude::*;

struct Fixture {
    objects: RecordingObjects,
    key: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let spool = tempfile::tempdir().unwrap();
                let out = tempfile::tempdir().unwrap();
                let url = format!("file://{}", out.path().display());
                let path = RecordingPath {
                    namespace: "ns".into(),
                    session: "s".into(),
                    pod: "p".into(),
                    pod_uid: "u".into(),
                };
                let mut config = RecorderConfig::new(&url, spool.path(), path.clone());
                config.segment_max_bytes = 1500;
                let recorder = Recorder::start(config).await.unwrap();
                for n in 0..40 {
                    recorder
                        .record(Event::Gap(Gap {
                            lost: format!("nothing, record {n}"),
                            reason: "fixture".into(),
                            records: Some(n),
                            bytes: None,
                            from: None,
                            to: None,
                        }))
                        .await
                        .unwrap();
                }
                recorder.shutdown().await.unwrap();
                let sink = Sink::open(&url, &GcsOptions::default()).await.unwrap();
                let objects = load(&sink, &format!("{}/", path.prefix())).await.unwrap();
                assert!(objects.segments.len() >= 5, "{}", objects.segments.len());
                let key =
                    cassette_recording::key::decode_public_key(&recorder.public_key()).unwrap();
                Fixture { objects, key }
            })
    })
}

fn check(objects: &RecordingObjects) -> Report {
    verify(objects, Some(&fixture().key))
}

fn names(report: &Report) -> Vec<String> {
    report
        .faults
        .iter()
        .filter_map(|f| f.object.clone())
        .collect()
}

fn recompress(text: &[u8]) -> Vec<u8> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.write_all(text).unwrap();
    e.finish().unwrap()
}

fn plain(o: &SegmentObject) -> Vec<u8> {
    cassette_recording::read::decode_segment(&o.name, &o.bytes).unwrap()
}

#[test]
fn an_untouched_recording_verifies() {
    let report = check(&fixture().objects);
    assert!(report.is_ok(), "{:#?}", report.faults);
    assert_eq!(report.completeness, Completeness::Complete);
    assert!(report.segments.iter().all(|s| s.sealed));
}

#[test]
fn a_wrong_expected_key_is_named() {
    let other = cassette_recording::key::SessionKey::generate().unwrap();
    let report = verify(&fixture().objects, Some(other.public_key()));
    assert!(
        report
            .faults
            .iter()
            .any(|f| matches!(f.problem, Problem::PublicKeyMismatch { .. }))
    );
    assert!(
        report
            .faults
            .iter()
            .any(|f| f.problem == Problem::BadSealSignature)
    );
    assert!(
        report
            .faults
            .iter()
            .any(|f| f.problem == Problem::BadManifestSignature)
    );
}

/// The next segment written by someone who is not the recorder, into a live recording (no
/// manifest yet): its records chain on from the last seal as the recorder's would (SHA-256 is
/// public), but nobody can sign them. The sidecar ships only sealed segments, so this is not
/// an "unsealed tail" of a recorder that died: it is an object the recorder did not write.
#[test]
fn a_shipped_segment_without_a_seal_is_invalid() {
    let mut objects = fixture().objects.clone();
    objects.manifest = None;
    let last = plain(objects.segments.last().unwrap());
    let last_line = last
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap();
    let tip: serde_json::Value = serde_json::from_slice(last_line).unwrap();
    let mut prev = tip["chain"].as_str().unwrap().to_string();
    let first = tip["seq"].as_u64().unwrap() + 1;
    let mut text = Vec::new();
    for (n, seq) in (first..first + 3).enumerate() {
        let event = Event::Gap(Gap {
            lost: format!("nothing, forged record {n}"),
            reason: "the agent wrote this".into(),
            records: None,
            bytes: None,
            from: None,
            to: None,
        });
        let canonical =
            cassette_recording::chain::canonical(seq, "2026-05-01T12:00:00.000000000Z", &event);
        let link = cassette_recording::chain::link(&prev, &canonical);
        text.extend(cassette_recording::chain::line(&canonical, &link));
        prev = link;
    }
    let name = format!("seg-{:06}.jsonl.zst", objects.segments.len() + 1);
    objects.segments.push(SegmentObject {
        name: name.clone(),
        bytes: recompress(&text),
    });
    let report = check(&objects);
    assert!(
        report
            .faults
            .iter()
            .any(|f| f.problem == Problem::NotSealed && f.object.as_deref() == Some(&name)),
        "{:#?}",
        report.faults
    );

    // The recorder's own last segment cut before its seal is the same: not the recorder's.
    let mut objects = fixture().objects.clone();
    objects.manifest = None;
    let last = objects.segments.last_mut().unwrap();
    let text = plain(last);
    let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    last.bytes = recompress(&lines[..lines.len() - 1].concat());
    let report = check(&objects);
    assert!(
        report
            .faults
            .iter()
            .any(|f| f.problem == Problem::NotSealed),
        "{:#?}",
        report.faults
    );
}

/// A manifest the agent wrote in place of the recorder's: it lists the real segments with
/// their real digests and totals, but it is signed with the agent's key. (This was INVALID
/// before too; kept as the regression test of that attack.)
#[test]
fn a_manifest_signed_by_another_key_is_invalid() {
    let mut objects = fixture().objects.clone();
    let (mut manifest, _, _) =
        cassette_recording::Manifest::parse(objects.manifest.as_ref().unwrap()).unwrap();
    let agent = cassette_recording::key::SessionKey::generate().unwrap();
    manifest.public_key = agent.public_key_base64();
    objects.manifest = Some(manifest.signed_bytes(&agent));
    for key in [Some(fixture().key.as_slice()), None] {
        let report = verify(&objects, key);
        assert!(
            report
                .faults
                .iter()
                .any(|f| f.problem == Problem::BadManifestSignature),
            "{:#?}",
            report.faults
        );
    }
}

#[test]
fn an_altered_record_is_named_by_segment_and_seq() {
    let mut objects = fixture().objects.clone();
    let seg = &mut objects.segments[2];
    let text = String::from_utf8(plain(seg)).unwrap();
    let altered = text.replacen("nothing", "NOTHING", 1);
    seg.bytes = recompress(altered.as_bytes());
    let name = seg.name.clone();
    let report = check(&objects);
    let chain_fault = report
        .faults
        .iter()
        .find(|f| matches!(f.problem, Problem::ChainBroken { .. }))
        .expect("chain fault");
    assert_eq!(chain_fault.object.as_deref(), Some(name.as_str()));
    assert!(chain_fault.seq.is_some());
    assert!(chain_fault.to_string().contains(&name), "{chain_fault}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_byte_flip_is_found(which in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), mask in 1u8..) {
        let mut objects = fixture().objects.clone();
        let n = objects.segments.len();
        let i = which.index(n + 1);
        let name = if i == n {
            let m = objects.manifest.as_mut().unwrap();
            let p = at.index(m.len());
            m[p] ^= mask;
            "manifest.json".to_string()
        } else {
            let s = &mut objects.segments[i];
            let p = at.index(s.bytes.len());
            s.bytes[p] ^= mask;
            s.name.clone()
        };
        let report = check(&objects);
        prop_assert!(!report.is_ok());
        prop_assert!(names(&report).contains(&name), "{:?} not in {:#?}", name, report.faults);
    }

    #[test]
    fn a_dropped_segment_is_found(which in any::<prop::sample::Index>()) {
        let mut objects = fixture().objects.clone();
        let i = which.index(objects.segments.len());
        let gone = objects.segments.remove(i).name;
        let report = check(&objects);
        prop_assert!(report.faults.iter().any(|f| matches!(&f.problem,
            Problem::ManifestSegmentMissing { name } if *name == gone)), "{:#?}", report.faults);
        if i + 1 < fixture().objects.segments.len() {
            prop_assert!(report.faults.iter().any(|f| matches!(f.problem, Problem::MissingSegments { .. })), "{:#?}", report.faults);
        }
    }

    #[test]
    fn reordered_segments_are_found(a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>()) {
        let mut objects = fixture().objects.clone();
        let n = objects.segments.len();
        let (i, j) = (a.index(n), b.index(n));
        prop_assume!(i != j);
        // Swap contents under the same names (what renaming objects in a bucket does) …
        let tmp = objects.segments[i].bytes.clone();
        objects.segments[i].bytes = objects.segments[j].bytes.clone();
        objects.segments[j].bytes = tmp;
        let report = check(&objects);
        prop_assert!(report.faults.iter().any(|f| matches!(f.problem, Problem::Mislabelled { .. })), "{:#?}", report.faults);
        // … or list them out of order.
        let mut listed = fixture().objects.clone();
        listed.segments.swap(i, j);
        prop_assert!(!check(&listed).is_ok());
    }

    #[test]
    fn duplicated_segments_are_found(a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>()) {
        let mut objects = fixture().objects.clone();
        let n = objects.segments.len();
        let (i, j) = (a.index(n), b.index(n));
        prop_assume!(i != j);
        objects.segments[j].bytes = objects.segments[i].bytes.clone();
        let report = check(&objects);
        prop_assert!(names(&report).contains(&objects.segments[j].name), "{:#?}", report.faults);
        // A copy under a new name after the last segment.
        let mut extra = fixture().objects.clone();
        let mut copy = extra.segments[i].clone();
        copy.name = format!("seg-{:06}.jsonl.zst", n + 1);
        extra.segments.push(copy);
        let report = check(&extra);
        prop_assert!(report.faults.iter().any(|f| f.problem == Problem::NotInManifest));
    }

    #[test]
    fn truncated_objects_are_found(which in any::<prop::sample::Index>(), keep in any::<prop::sample::Index>()) {
        let mut objects = fixture().objects.clone();
        let n = objects.segments.len();
        let i = which.index(n + 1);
        let name = if i == n {
            let m = objects.manifest.as_mut().unwrap();
            let k = keep.index(m.len() - 1);
            m.truncate(k);
            "manifest.json".to_string()
        } else {
            let s = &mut objects.segments[i];
            let k = keep.index(s.bytes.len());
            s.bytes.truncate(k);
            s.name.clone()
        };
        let report = check(&objects);
        prop_assert!(names(&report).contains(&name), "{:?} not in {:#?}", name, report.faults);
    }
}

/// A recording names its place (session_start, manifest): copied under another session's or
/// pod's place, it is not that place's recording.
#[test]
fn a_recording_at_another_place_is_named() {
    use cassette_recording::{Expected, Place, verify_expecting};
    let expect = |place: &str| Expected {
        keys: vec![fixture().key.clone()],
        place: Place::of(place),
    };
    let report = verify_expecting(&fixture().objects, &expect("file:///sink/ns/s/p-u/"));
    assert!(report.is_ok(), "{:#?}", report.faults);
    let report = verify_expecting(&fixture().objects, &expect("gs://b/pfx/ns/other/p-u"));
    let wrong: Vec<_> = report
        .faults
        .iter()
        .filter(|f| matches!(&f.problem, Problem::WrongPlace { names, .. } if names == "session s"))
        .map(|f| f.object.clone().unwrap())
        .collect();
    assert!(
        wrong.iter().any(|o| o.starts_with("seg-000001")),
        "{wrong:?}"
    );
    assert!(wrong.iter().any(|o| o == "manifest.json"), "{wrong:?}");
    let report = verify_expecting(&fixture().objects, &expect("ns/s/p-v"));
    assert!(report.faults.iter().any(
        |f| matches!(&f.problem, Problem::WrongPlace { names, .. } if names == "pod p (uid u)")
    ));
    assert_eq!(Place::of("gs://bucket"), None);
}

/// With one key per pod of a session pinned, each recording must be signed by one of them.
#[test]
fn any_of_several_pinned_keys_will_do_but_one_must() {
    use cassette_recording::{Expected, verify_expecting};
    let other = || {
        cassette_recording::key::SessionKey::generate()
            .unwrap()
            .public_key()
            .to_vec()
    };
    let keys = vec![other(), fixture().key.clone(), other()];
    let report = verify_expecting(&fixture().objects, &Expected { keys, place: None });
    assert!(report.is_ok(), "{:#?}", report.faults);
    let report = verify_expecting(
        &fixture().objects,
        &Expected {
            keys: vec![other(), other()],
            place: None,
        },
    );
    assert!(
        report
            .faults
            .iter()
            .any(|f| matches!(&f.problem, Problem::PublicKeyMismatch { expected, .. } if expected.contains(" or ")))
    );
}
