#!/usr/bin/env bash
# Makes push.pack, the fixture of rules/src/pack/tests.rs: what `git push` sends for two
# commits on a new branch, the second of which commits a (fake) GitHub token to
# config/deploy.env and is then changed again, so that the pack holds deltas; and
# push-thin.pack, the thin pack of a push of the last two commits to a remote that has the
# first (its deltas' bases are in the remote, not in the pack).
# Run from this directory; needs git. The output is deterministic (fixed dates and names).
set -euo pipefail
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export GIT_AUTHOR_NAME="Agent" GIT_AUTHOR_EMAIL="agent@example.com"
export GIT_COMMITTER_NAME="Agent" GIT_COMMITTER_EMAIL="agent@example.com"
export GIT_AUTHOR_DATE="2026-11-25T09:00:00Z" GIT_COMMITTER_DATE="2026-11-25T09:00:00Z"
git -C "$dir" init -q -b main
mkdir -p "$dir/config" "$dir/src"
for i in $(seq 1 200); do echo "line $i of a file long enough to be stored as a delta"; done > "$dir/src/lib.txt"
for i in $(seq 1 20); do echo "SETTING_$i=a value long enough to make a delta worth it"; done > "$dir/config/deploy.env"
git -C "$dir" add -A && git -C "$dir" commit -q -m "first"
echo "GITHUB_TOKEN=ghp_0123456789abcdefghijklmnopqrstuvwxyzAB" >> "$dir/config/deploy.env"
echo "line 201" >> "$dir/src/lib.txt"
git -C "$dir" add -A && git -C "$dir" commit -q -m "add the deploy token ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"
echo "line 202" >> "$dir/src/lib.txt"
git -C "$dir" add -A && git -C "$dir" commit -q -m "third"
git -C "$dir" rev-list --objects main | git -C "$dir" pack-objects -q --stdout --delta-base-offset --window=10 --depth=5 > push.pack
printf "main\n^main~2\n" | git -C "$dir" pack-objects -q --stdout --revs --thin --window=10 --depth=5 > push-thin.pack
git -C "$dir" rev-parse main > push.head
git -C "$dir" rev-list --objects --all | awk '{print $1}' | sort > push.ids
