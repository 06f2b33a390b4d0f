use super::*;
use crate::mask::{fingerprint, mask_text};
use proptest::prelude::*;
use std::io::Write;

const KEY: &[u8] = b"pack key";
const TOKEN: &str = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";

/// What `git push` sends for three commits (testdata/make-push-pack.sh).
const PUSH: &[u8] = include_bytes!("../../testdata/push.pack");
/// The thin pack of the last two of them.
const THIN: &[u8] = include_bytes!("../../testdata/push-thin.pack");
const IDS: &str = include_str!("../../testdata/push.ids");
const HEAD: &str = include_str!("../../testdata/push.head");

fn masker() -> &'static Masker {
    static M: std::sync::LazyLock<Masker> =
        std::sync::LazyLock::new(|| Masker::new(None, KEY).unwrap());
    &M
}

fn read(pack: &[u8], chunk: usize, limits: PackLimits) -> (Vec<PackObject>, PackSummary) {
    let mut reader = PackReader::new(masker(), ObjectFormat::Sha1, limits);
    let mut objects = Vec::new();
    for piece in pack.chunks(chunk.max(1)) {
        objects.extend(reader.feed(piece).unwrap());
    }
    let (rest, summary) = reader.finish().unwrap();
    objects.extend(rest);
    (objects, summary)
}

#[test]
fn a_pushed_pack_is_recorded_object_by_object_with_its_secret_masked() {
    // What main recorded: the pack's bytes, in which the committed token is compressed and
    // no detector finds it.
    let (_, raw) = masker().mask(BodyKind::Other, PUSH);
    assert_eq!(raw.total(), 0);

    let (objects, summary) = read(PUSH, 1 << 20, PackLimits::default());
    assert!(summary.checksum_ok);
    assert_eq!(
        (summary.announced, summary.objects, summary.unresolved),
        (16, 16, 0)
    );
    let mut ids: Vec<String> = objects.iter().filter_map(|o| o.id.clone()).collect();
    ids.sort();
    let want: Vec<String> = IDS.lines().map(str::to_owned).collect();
    assert_eq!(ids, want, "every object id is git's");
    assert_eq!(summary.kinds.get("commit"), Some(&3));
    assert_eq!(summary.kinds.get("blob"), Some(&5));

    let head = objects
        .iter()
        .find(|o| o.id.as_deref() == Some(HEAD.trim()))
        .unwrap();
    let commit = head.commit.as_ref().unwrap();
    assert_eq!(commit.message, "third\n");
    assert_eq!(
        commit.author.as_deref(),
        Some("Agent <agent@example.com> 1795597200 +0000")
    );
    assert_eq!(commit.parents.len(), 1);

    // The commit message that names the token is recorded masked.
    let fp = fingerprint(KEY, TOKEN.as_bytes());
    let second = objects
        .iter()
        .find(|o| {
            o.commit
                .as_ref()
                .is_some_and(|c| c.message.starts_with("add the deploy token"))
        })
        .unwrap();
    assert_eq!(
        second.commit.as_ref().unwrap().message,
        format!("add the deploy token {}\n", mask_text("github-token", &fp))
    );
    assert_eq!(second.masks.len(), 1);

    // The file that carries it: which blob, by which path, in which commits.
    let blob = objects
        .iter()
        .find(|o| o.kind == Some(ObjectKind::Blob) && !o.masks.is_empty())
        .unwrap();
    assert_eq!(blob.masks[0].fingerprint, fp);
    let paths: Vec<(&str, &str)> = summary
        .path_masks
        .iter()
        .map(|p| (p.path.as_str(), p.detector.as_str()))
        .collect();
    assert_eq!(paths, vec![("config/deploy.env", "github-token"); 2]);
    let commits: Vec<&str> = summary
        .path_masks
        .iter()
        .filter_map(|p| p.commit.as_deref())
        .collect();
    assert!(commits.contains(&HEAD.trim()), "{commits:?}");
    assert!(commits.contains(&second.id.as_deref().unwrap()));
    assert!(
        summary
            .path_masks
            .iter()
            .all(|p| p.fingerprint == fp && p.blob == *blob.id.as_ref().unwrap())
    );

    // Trees name their entries; deltas are resolved against their bases.
    assert!(objects.iter().any(|o| o.tree.as_ref().is_some_and(|t| {
        t.iter()
            .any(|e| e.name == "deploy.env" && e.mode == "100644")
    })));
    let deltas: Vec<&PackObject> = objects
        .iter()
        .filter(|o| matches!(o.storage, Storage::Delta { .. }))
        .collect();
    assert_eq!(deltas.len(), 3);
    assert!(
        deltas
            .iter()
            .all(|o| matches!(o.storage, Storage::Delta { resolved: true, .. }) && o.id.is_some())
    );
}

#[test]
fn a_thin_pack_keeps_unresolved_deltas_and_scans_what_they_insert() {
    let (objects, summary) = read(THIN, 1 << 20, PackLimits::default());
    assert!(summary.checksum_ok);
    assert_eq!(summary.unresolved, 3);
    for o in objects
        .iter()
        .filter(|o| matches!(o.storage, Storage::Delta { .. }))
    {
        let Storage::Delta {
            resolved,
            why,
            base,
        } = &o.storage
        else {
            unreachable!()
        };
        assert!(!resolved);
        assert_eq!(base.len(), 40);
        assert!(
            why.as_deref().unwrap().contains("not in this pack"),
            "{why:?}"
        );
        assert_eq!(o.id, None);
    }
    // The token arrives in a delta against a blob the remote has: still found.
    let fp = fingerprint(KEY, TOKEN.as_bytes());
    assert!(
        objects
            .iter()
            .any(|o| o.kind.is_none() && o.masks.iter().any(|m| m.fingerprint == fp)),
        "{objects:#?}"
    );
}

#[test]
fn bounds_leave_deltas_unresolved_with_why() {
    let limits = PackLimits {
        max_cache_bytes: 100,
        ..PackLimits::default()
    };
    let (objects, summary) = read(PUSH, 4096, limits);
    assert_eq!(summary.unresolved, 3);
    let why: Vec<String> = objects
        .iter()
        .filter_map(|o| match &o.storage {
            Storage::Delta { why, .. } => why.clone(),
            _ => None,
        })
        .collect();
    assert!(why.iter().all(|w| w.contains("not kept")), "{why:?}");
    // The big blob is held as it streams and still scanned when over the object bound.
    let limits = PackLimits {
        max_object_bytes: 1000,
        ..PackLimits::default()
    };
    let (objects, summary) = read(PUSH, 333, limits);
    assert!(
        objects
            .iter()
            .any(|o| o.note.as_deref().is_some_and(|n| n.contains("streamed")))
    );
    assert_eq!(summary.path_masks.len(), 2);
}

/// Builds a pack from (type code, payload, ofs base index or ref base id) entries.
fn build(entries: &[(u8, Vec<u8>, Option<Base>)]) -> Vec<u8> {
    let mut pack = b"PACK".to_vec();
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    let mut offsets = Vec::new();
    for (code, payload, base) in entries {
        offsets.push(pack.len() as u64);
        let mut size = payload.len() as u64;
        let mut first = (code << 4) | (size & 0x0f) as u8;
        size >>= 4;
        if size > 0 {
            first |= 0x80;
        }
        pack.push(first);
        while size > 0 {
            let mut b = (size & 0x7f) as u8;
            size >>= 7;
            if size > 0 {
                b |= 0x80;
            }
            pack.push(b);
        }
        match base {
            Some(Base::Offset(i)) => {
                let mut distance = offsets.last().unwrap() - offsets[*i];
                let mut bytes = vec![(distance & 0x7f) as u8];
                distance >>= 7;
                while distance > 0 {
                    distance -= 1;
                    bytes.push(0x80 | (distance & 0x7f) as u8);
                    distance >>= 7;
                }
                bytes.reverse();
                pack.extend(bytes);
            }
            Some(Base::Id(id)) => pack.extend_from_slice(id),
            None => {}
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(payload).unwrap();
        pack.extend(z.finish().unwrap());
    }
    let sum = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &pack);
    pack.extend_from_slice(sum.as_ref());
    pack
}

enum Base {
    Offset(usize),
    Id(Vec<u8>),
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A delta that keeps `keep` bytes of `base` and appends `insert`.
fn delta(base: &[u8], keep: usize, insert: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    varint(base.len(), &mut d);
    varint(keep + insert.len(), &mut d);
    if keep > 0 {
        d.push(0x80 | 0x10 | 0x20);
        d.push((keep & 0xff) as u8);
        d.push((keep >> 8) as u8);
    }
    for piece in insert.chunks(127) {
        d.push(piece.len() as u8);
        d.extend_from_slice(piece);
    }
    d
}

fn object_id(kind: &str, content: &[u8]) -> Vec<u8> {
    let mut h = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    h.update(format!("{kind} {}\0", content.len()).as_bytes());
    h.update(content);
    h.finish().as_ref().to_vec()
}

#[test]
fn ref_deltas_whose_base_comes_later_and_offset_chains() {
    let base = b"0123456789 a file\n".repeat(10);
    let first = [&base[..], format!("token {TOKEN}\n").as_bytes()].concat();
    let d1 = delta(&base, base.len(), format!("token {TOKEN}\n").as_bytes());
    let d2 = delta(&first, first.len(), b"more\n");
    let pack = build(&[
        (7, d1, Some(Base::Id(object_id("blob", &base)))),
        (3, base.clone(), None),
        (6, d2, Some(Base::Offset(0))),
    ]);
    let (objects, summary) = read(&pack, 7, PackLimits::default());
    assert_eq!(summary.unresolved, 0, "{objects:#?}");
    assert_eq!(
        objects[0].id.as_deref(),
        Some(hex(&object_id("blob", &first)).as_str())
    );
    let second = [&first[..], b"more\n"].concat();
    assert_eq!(
        objects[2].id.as_deref(),
        Some(hex(&object_id("blob", &second)).as_str())
    );
    let fp = fingerprint(KEY, TOKEN.as_bytes());
    assert!(objects[0].masks.iter().any(|m| m.fingerprint == fp));
    assert!(objects[2].masks.iter().any(|m| m.fingerprint == fp));
}

#[test]
fn broken_packs_are_errors() {
    let mut r = PackReader::new(masker(), ObjectFormat::Sha1, PackLimits::default());
    assert!(matches!(
        r.feed(b"NOPE\0\0\0\x02\0\0\0\x01"),
        Err(PackError::NotAPack(_))
    ));
    let mut r = PackReader::new(masker(), ObjectFormat::Sha1, PackLimits::default());
    r.feed(&PUSH[..PUSH.len() / 2]).unwrap();
    assert!(matches!(r.finish(), Err(PackError::Truncated { .. })));
    let mut bad = PUSH.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let (_, summary) = read(&bad, 100, PackLimits::default());
    assert!(!summary.checksum_ok);
    let mut r = PackReader::new(
        masker(),
        ObjectFormat::Sha1,
        PackLimits {
            max_objects: 3,
            ..PackLimits::default()
        },
    );
    assert!(matches!(r.feed(PUSH), Err(PackError::Limit(_))));
}

#[test]
fn fetch_responses_yield_their_pack() {
    use crate::git::{FLUSH, SideBand, pkt_line, side_band};
    let mut body = pkt_line(b"NAK\n");
    body.extend(side_band(
        SideBand::Large,
        2,
        b"Counting objects: 16, done.\n",
    ));
    body.extend(side_band(SideBand::Large, 1, PUSH));
    body.extend_from_slice(FLUSH);
    for chunk in [1, 5, 4096] {
        let mut f = FetchResponse::new();
        let mut pack = Vec::new();
        for piece in body.chunks(chunk) {
            pack.extend(f.feed(piece).unwrap());
        }
        assert_eq!(pack, PUSH);
    }
    let mut raw = pkt_line(b"NAK\n");
    raw.extend_from_slice(PUSH);
    let mut f = FetchResponse::new();
    let mut pack = Vec::new();
    for piece in raw.chunks(3) {
        pack.extend(f.feed(piece).unwrap());
    }
    assert_eq!(pack, PUSH);
}

#[test]
fn deltas_apply_as_git_defines_them() {
    let base = b"hello world";
    assert_eq!(
        apply_delta(base, &delta(base, 5, b", git"), 100).unwrap(),
        b"hello, git"
    );
    assert!(
        apply_delta(base, &[11, 5, 0x91, 20, 5], 100).is_err(),
        "copy past the base"
    );
    assert!(
        apply_delta(base, &[3, 1, 1, b'x'], 100).is_err(),
        "wrong base size"
    );
    assert!(
        apply_delta(base, &[11, 1, 0], 100).is_err(),
        "reserved instruction"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any chunking reads the same objects and the same masks.
    #[test]
    fn chunking_changes_nothing(chunk in 1usize..2000) {
        let (want, want_summary) = read(PUSH, 1 << 20, PackLimits::default());
        let (got, summary) = read(PUSH, chunk, PackLimits::default());
        prop_assert_eq!(got, want);
        prop_assert_eq!(summary, want_summary);
    }

    /// Arbitrary bytes after a pack header, or a pack with bytes flipped, never panic.
    #[test]
    fn damaged_packs_never_panic(
        flips in proptest::collection::vec((0usize..1724, any::<u8>()), 0..8),
        tail in proptest::collection::vec(any::<u8>(), 0..400),
        chunk in 1usize..600,
    ) {
        let mut pack = PUSH.to_vec();
        for (at, b) in flips {
            let at = at % pack.len();
            pack[at] ^= b;
        }
        let mut garbage = b"PACK\0\0\0\x02\0\0\0\x05".to_vec();
        garbage.extend(tail);
        for body in [pack, garbage] {
            let mut r = PackReader::new(masker(), ObjectFormat::Sha1, PackLimits::default());
            for piece in body.chunks(chunk) {
                if r.feed(piece).is_err() {
                    break;
                }
            }
            let _ = r.finish();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// A secret committed in a file, whole or through a delta, in any pack chunking, is
    /// found with the fingerprint search computes, under the file's path.
    #[test]
    fn committed_secrets_are_found_by_search_under_their_path(
        before in "[a-z \n]{0,200}",
        name in "[a-z]{1,12}\\.(env|txt|json)",
        through_delta in any::<bool>(),
        chunk in 1usize..300,
    ) {
        let secret = TOKEN;
        let base = format!("{before}\nnothing to see\n").into_bytes();
        let file = [&base[..], format!("token={secret}\n").as_bytes()].concat();
        let blob_id = object_id("blob", &file);
        let mut tree = format!("100644 {name}\0").into_bytes();
        tree.extend_from_slice(&blob_id);
        let tree_id = object_id("tree", &tree);
        let commit = format!(
            "tree {}\nauthor A <a@example.com> 1 +0000\ncommitter A <a@example.com> 1 +0000\n\nadd {name}\n",
            hex(&tree_id)
        ).into_bytes();
        let commit_id = hex(&object_id("commit", &commit));
        let entries = if through_delta {
            let d = delta(&base, base.len(), format!("token={secret}\n").as_bytes());
            vec![(1, commit, None), (2, tree, None), (3, base.clone(), None), (6, d, Some(Base::Offset(2)))]
        } else {
            vec![(1, commit, None), (2, tree, None), (3, file, None)]
        };
        let pack = build(&entries);
        let (objects, summary) = read(&pack, chunk, PackLimits::default());
        prop_assert!(summary.checksum_ok);
        let found: Vec<String> = crate::mask::secret_candidates(secret.as_bytes())
            .into_iter()
            .map(|c| fingerprint(KEY, &c.value))
            .collect();
        prop_assert!(summary.path_masks.iter().any(|p| {
            p.path == name && p.commit.as_deref() == Some(commit_id.as_str()) && found.contains(&p.fingerprint)
        }), "{:?}", summary.path_masks);
        // Nothing recorded of an object holds the secret.
        let recorded = format!("{objects:?}");
        prop_assert!(!recorded.contains(secret));
    }
}

/// What is handed out is let go: the reader holds no object it has returned.
#[test]
fn returned_objects_are_not_kept() {
    let mut r = PackReader::new(masker(), ObjectFormat::Sha1, PackLimits::default());
    let mut returned = 0;
    for piece in PUSH.chunks(100) {
        returned += r.feed(piece).unwrap().len();
        assert!(r.objects.len() <= 1, "{} objects held", r.objects.len());
    }
    assert_eq!(returned, 16);
    let (rest, _) = r.finish().unwrap();
    assert!(rest.is_empty());
}

/// Found by `make fuzz`: a broken zlib stream, read whole or cut, is an error for the same
/// object either way (the wording may say zlib or overshoot).
#[test]
fn a_broken_object_is_the_same_error_under_any_chunking() {
    let mut pack = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
    pack.extend_from_slice(&[0x36, 0x78, 0x9c, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    pack.extend_from_slice(&[0xff; 40]);
    let error = |chunk: usize| {
        let mut r = PackReader::new(masker(), ObjectFormat::Sha1, PackLimits::default());
        for piece in pack.chunks(chunk) {
            if let Err(e) = r.feed(piece) {
                return Some(e);
            }
        }
        r.finish().err()
    };
    for chunk in [1, 2, 3, 7, 1000] {
        match error(chunk) {
            Some(PackError::Corrupt {
                index: 0,
                offset: 12,
                ..
            }) => {}
            other => panic!("chunks of {chunk}: {other:?}"),
        }
    }
}

/// Found by `make fuzz`: when a later object breaks, the objects before it are handed out
/// whether the pack came in one piece or many, and the error follows.
#[test]
fn objects_before_a_break_stand_under_any_chunking() {
    let mut pack = build(&[
        (3, b"first blob\n".to_vec(), None),
        (3, b"second\n".to_vec(), None),
    ]);
    let second_data = pack.len() - 20 - 10;
    pack[second_data] ^= 0xff;
    let run = |chunk: usize| {
        let mut r = PackReader::new(masker(), ObjectFormat::Sha1, PackLimits::default());
        let mut objects = Vec::new();
        let mut error = None;
        for piece in pack.chunks(chunk) {
            match r.feed(piece) {
                Ok(o) => objects.extend(o),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if error.is_none() {
            error = r.finish().err();
        }
        (
            objects.len(),
            error.map(|e| matches!(e, PackError::Corrupt { index: 1, .. })),
        )
    };
    for chunk in [1, 5, 13, 10_000] {
        assert_eq!(run(chunk), (1, Some(true)), "chunks of {chunk}");
    }
}
